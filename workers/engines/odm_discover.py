"""Records ODM's argparse options; run as a file with ODM's own Python: odm_discover.py <odm_path> [<tmp dir>].

Prints {args[0]: {kwarg: str(value)}} for every add_argument call as JSON on the last line of stdout
(NodeODM's odmOptionsToJson.py format), and before it {"rerunStages": {...}}: ODM's table of the stage each
option reruns from (`rerun_stages` in opendm/config.py), when the install has one. Kept free of anything newer than Python 3.6 and of any import
from this project, because it runs inside ODM's interpreter, not ours.
"""

import argparse
import importlib
import inspect
import json
import os
import sys
import tempfile

recorded = {}  # type: dict


def _record(args, kwargs):
    if args:
        recorded[str(args[0])] = {str(k): str(v) for k, v in kwargs.items()}


def _recording(container):
    """Make an argument group (or a mutually exclusive group) record what is added to it."""
    add_argument = container.add_argument

    def recording_add_argument(*args, **kwargs):
        action = add_argument(*args, **kwargs)
        _record(args, kwargs)
        return action

    container.add_argument = recording_add_argument
    for method in ("add_argument_group", "add_mutually_exclusive_group"):
        original = getattr(container, method, None)
        if original is not None:
            setattr(container, method, _recording_factory(original))
    return container


def _recording_factory(make_group):
    def make_recording_group(*args, **kwargs):
        return _recording(make_group(*args, **kwargs))

    return make_recording_group


class RecordingParser(argparse.ArgumentParser):
    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        _record(args, kwargs)
        return action

    def add_argument_group(self, *args, **kwargs):
        return _recording(super().add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group(self, *args, **kwargs):
        return _recording(super().add_mutually_exclusive_group(*args, **kwargs))


def _load_config_module(odm_path):
    sys.path.insert(0, odm_path)
    # appended, not prepended: opendm/ holds modules (io, types...) that would shadow the standard library
    sys.path.append(os.path.join(odm_path, "opendm"))
    try:
        return importlib.import_module("opendm.config")
    except ImportError as exc:
        if getattr(exc, "name", None) not in ("opendm", "opendm.config"):
            raise  # config.py was found but one of its own imports failed
        return importlib.import_module("config")


def _call_config(module, argv):
    parser = RecordingParser()
    config = module.config
    try:
        params = set(inspect.signature(config).parameters)
    except (TypeError, ValueError):
        params = set()
    # ODM >= 2 takes argv/parser; older versions read sys.argv and a module-level parser
    if "argv" in params and "parser" in params:
        config(argv=argv, parser=parser)
    elif "parser" in params:
        config(parser=parser)
    else:
        module.parser = parser
        config()


def main():
    if len(sys.argv) < 2:
        sys.stderr.write("usage: odm_discover.py <odm_path> [<tmp dir>]\n")
        return 2
    if len(sys.argv) > 2:
        return discover(os.path.abspath(sys.argv[1]), sys.argv[2])
    with tempfile.TemporaryDirectory(prefix="odm-discover-") as project_path:
        return discover(os.path.abspath(sys.argv[1]), project_path)


def discover(odm_path, project_path):
    here = os.path.dirname(os.path.abspath(__file__))
    # this file's folder holds modules (odm.py, base.py) that must not shadow anything ODM imports
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    argv = ["--project-path", project_path]
    sys.argv = [os.path.join(odm_path, "run.py")] + argv
    os.chdir(odm_path)

    stdout = sys.stdout
    sys.stdout = sys.stderr  # ODM logs while importing and configuring; keep stdout for the result
    try:
        module = _load_config_module(odm_path)
        try:
            _call_config(module, argv)
        except SystemExit as exc:
            # ODM's config() exits on arguments it dislikes; what it declared before that is recorded
            if not recorded:
                sys.stderr.write(f"ODM's config() exited ({exc.code}) before declaring any option\n")
                return 1
    finally:
        sys.stdout = stdout
    if not recorded:
        sys.stderr.write("ODM's config() declared no option\n")
        return 1
    table = getattr(module, "rerun_stages", None)
    if isinstance(table, dict):
        stages = {str(k): (v if isinstance(v, str) else None) for k, v in table.items()}
        stdout.write("\n" + json.dumps({"rerunStages": stages}))
    stdout.write("\n" + json.dumps(recorded) + "\n")
    stdout.flush()
    sys.stdout = sys.stderr  # anything printed at exit must not follow the result
    return 0


if __name__ == "__main__":
    sys.exit(main())
