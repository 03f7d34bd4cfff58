"""What the API and the workers share: settings, task model, Redis store, object store, options, errors."""
