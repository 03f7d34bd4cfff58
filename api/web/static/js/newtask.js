// The "New task" panel: drop images (or pick them), name, webhook, options; init, upload, commit.

import { clear, formatBytes, h, setText } from "./dom.js";
import { OptionsForm } from "./options.js";
import { uploadFiles } from "./upload.js";

export class NewTask {
  constructor(api, getCatalog, onCreated) {
    this.api = api;
    this.getCatalog = getCatalog;
    this.onCreated = onCreated;
    this.files = [];
    this.busy = false;
    this.pending = null; // {uuid, failed} after an upload with failed files

    this.fileInput = h("input", {
      type: "file", multiple: true, id: "file-input", class: "visually-hidden",
      accept: "image/*,.txt,.zip,.tif,.tiff,.jpg,.jpeg,.png,.dng",
      onchange: () => { this.addFiles([...this.fileInput.files]); this.fileInput.value = ""; },
    });
    this.drop = h("div", { class: "dropzone", id: "dropzone", tabindex: "0", role: "button",
      "aria-label": "Drop images here or choose files",
      onclick: () => this.fileInput.click(),
      onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); this.fileInput.click(); } },
      ondragover: (e) => { e.preventDefault(); this.drop.classList.add("over"); },
      ondragleave: () => this.drop.classList.remove("over"),
      ondrop: (e) => {
        e.preventDefault();
        this.drop.classList.remove("over");
        this.addFiles([...(e.dataTransfer?.files || [])]);
      },
    },
    h("strong", {}, "Drop images here"), h("span", { class: "muted" }, " or click to choose files (images, GCP/geo .txt, .zip)"));
    this.summary = h("div", { class: "file-summary", id: "file-summary" });
    this.name = h("input", { class: "input", id: "task-name", type: "text", placeholder: "Task name (optional)", maxlength: "1024" });
    this.webhook = h("input", { class: "input", id: "task-webhook", type: "url", placeholder: "https://… (optional: called when the task ends)" });
    this.optionsHost = h("div", {});
    this.optionsBox = h("details", { class: "options-box" }, h("summary", {}, "Processing options"), this.optionsHost);
    this.optionsBox.addEventListener("toggle", () => this.#ensureOptions());
    this.progress = h("div", { class: "progress upload-progress", hidden: true },
      h("div", { class: "bar" }), h("span", { class: "progress-label" }));
    this.message = h("div", { class: "form-message", id: "upload-message", role: "status" });
    this.failures = h("ul", { class: "failures", id: "upload-failures" });
    this.submit = h("button", { type: "button", class: "btn primary", id: "start-task", onclick: () => this.start() }, "Start task");
    this.retryBtn = h("button", { type: "button", class: "btn", id: "retry-failed", hidden: true, onclick: () => this.retryFailed() }, "Retry failed files");
    this.commitBtn = h("button", { type: "button", class: "btn", id: "start-without", hidden: true, onclick: () => this.commitPending() }, "Start without them");
    this.resetBtn = h("button", { type: "button", class: "btn ghost", onclick: () => this.reset() }, "Clear");

    this.el = h("section", { class: "card new-task", id: "new-task" },
      h("div", { class: "card-head" }, h("h2", {}, "New task")),
      this.fileInput, this.drop, this.summary,
      h("div", { class: "grid2" },
        h("label", { class: "field" }, h("span", {}, "Name"), this.name),
        h("label", { class: "field" }, h("span", {}, "Webhook"), this.webhook)),
      this.optionsBox, this.progress, this.message, this.failures,
      h("div", { class: "actions" }, this.submit, this.retryBtn, this.commitBtn, this.resetBtn));
    this.#renderFiles();
  }

  async #ensureOptions() {
    if (this.form || !this.optionsBox.open) return;
    setText(this.optionsHost, "Loading options…");
    try {
      const catalog = await this.getCatalog();
      this.form = new OptionsForm(catalog);
      clear(this.optionsHost).append(this.form.el);
    } catch (error) {
      setText(this.optionsHost, `Could not load the options: ${error.message}`);
    }
  }

  addFiles(list) {
    if (this.busy) return;
    const known = new Set(this.files.map((f) => `${f.name}/${f.size}`));
    for (const file of list) if (!known.has(`${file.name}/${file.size}`)) this.files.push(file);
    this.pending = null;
    this.#renderFiles();
  }

  #renderFiles() {
    clear(this.summary);
    if (!this.files.length) {
      this.summary.append(h("span", { class: "muted" }, "No file chosen."));
      return;
    }
    const bytes = this.files.reduce((s, f) => s + f.size, 0);
    const names = this.files.slice(0, 6).map((f) => f.name).join(", ");
    this.summary.append(
      h("strong", {}, `${this.files.length} file(s), ${formatBytes(bytes)}`),
      h("span", { class: "muted file-names" }, `: ${names}${this.files.length > 6 ? ", …" : ""}`));
  }

  #setProgress(sent, total, label) {
    this.progress.hidden = false;
    const pct = total ? Math.min(100, (100 * sent) / total) : 0;
    this.progress.querySelector(".bar").style.width = `${pct.toFixed(1)}%`;
    setText(this.progress.querySelector(".progress-label"), label ?? `${formatBytes(sent)} of ${formatBytes(total)} (${pct.toFixed(0)}%)`);
    this.progress.dataset.sent = String(sent);
    this.progress.dataset.total = String(total);
  }

  #say(text, kind = "") {
    setText(this.message, text);
    this.message.className = `form-message ${kind}`;
  }

  #lock(busy) {
    this.busy = busy;
    this.submit.disabled = busy;
    this.drop.classList.toggle("disabled", busy);
  }

  async start() {
    if (this.busy) return;
    clear(this.failures);
    this.retryBtn.hidden = this.commitBtn.hidden = true;
    if (!this.files.length) return this.#say("Choose or drop at least one image first.", "error");
    let options = [];
    if (this.form) {
      options = this.form.values();
      if (options === null) {
        this.optionsBox.open = true;
        return this.#say("Some options are not valid: see the messages below each one.", "error");
      }
    }
    const webhook = this.webhook.value.trim();
    if (webhook && !/^https?:\/\//i.test(webhook)) return this.#say("The webhook must be an http(s) URL.", "error");
    this.#lock(true);
    try {
      this.#say("Creating the task…");
      const fields = { name: this.name.value.trim(), options: JSON.stringify(options) };
      if (webhook) fields.webhook = webhook;
      let init;
      try {
        init = await this.api.post("/task/new/init", fields);
      } catch (error) {
        if (this.form?.showServerErrors(error.message)) {
          this.optionsBox.open = true;
          return this.#say("The node refused some options: see the messages below each one.", "error");
        }
        throw error;
      }
      await this.#upload(init.uuid, this.files);
    } catch (error) {
      this.#say(`Could not create the task: ${error.message}`, "error");
    } finally {
      this.#lock(false);
    }
  }

  async #upload(uuid, files, sentBefore = 0) {
    this.#say(`Uploading ${files.length} file(s)…`);
    const { failed } = await uploadFiles(this.api, uuid, files, (sent, total) => this.#setProgress(sent, total));
    if (failed.length) {
      const sent = sentBefore + files.length - failed.length;
      this.pending = { uuid, failed: failed.map((f) => f.file), sent };
      clear(this.failures);
      for (const f of failed) {
        this.failures.append(h("li", { class: "failure" }, h("strong", {}, f.file.name), ": ", f.message));
      }
      this.retryBtn.hidden = false;
      this.commitBtn.hidden = sent === 0;
      this.#say(`${failed.length} file(s) could not be uploaded.`, "error");
      return;
    }
    await this.#commit(uuid);
  }

  async #commit(uuid) {
    this.#say("Starting the task…");
    await this.api.post(`/task/new/commit/${encodeURIComponent(uuid)}`);
    this.#say("Task created.", "ok");
    const total = Number(this.progress.dataset.total || 0);
    this.#setProgress(total, total, `Uploaded ${formatBytes(total)}`);
    this.files = [];
    this.pending = null;
    this.name.value = "";
    this.#renderFiles();
    this.onCreated(uuid);
  }

  async retryFailed() {
    if (!this.pending || this.busy) return;
    this.#lock(true);
    this.retryBtn.hidden = this.commitBtn.hidden = true;
    clear(this.failures);
    try {
      await this.#upload(this.pending.uuid, this.pending.failed, this.pending.sent);
    } catch (error) {
      this.#say(`Upload failed: ${error.message}`, "error");
    } finally {
      this.#lock(false);
    }
  }

  async commitPending() {
    if (!this.pending || this.busy) return;
    this.#lock(true);
    this.retryBtn.hidden = this.commitBtn.hidden = true;
    clear(this.failures);
    try {
      await this.#commit(this.pending.uuid);
    } catch (error) {
      this.#say(`Could not start the task: ${error.message}`, "error");
    } finally {
      this.#lock(false);
    }
  }

  reset() {
    if (this.busy) return;
    if (this.pending) this.api.post("/task/remove", { uuid: this.pending.uuid }).catch(() => {});
    this.files = [];
    this.pending = null;
    clear(this.failures);
    this.retryBtn.hidden = this.commitBtn.hidden = true;
    this.progress.hidden = true;
    this.#say("");
    this.#renderFiles();
  }
}
