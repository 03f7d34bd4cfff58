// The options form, generated from GET /options: enum as <select>, bool as a checkbox, numbers checked
// against their domain (the same rules as shared/options.py), help as a tooltip.

import { h, setText } from "./dom.js";

const SIGNED = /^(positive |negative )?(integer|float)$/;
const PERCENT = /^percent$/;
const RANGE = /^(float|integer): ([-+.\d]+) <= x <= ([-+.\d]+)$/;
const COMPARE = /^(float|integer) (>=|>|<|<=) ([-+.\d]+)$/;
const INT_TEXT = /^[-+]?\d+$/;
const FLOAT_TEXT = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

// why `text` is not a valid value of `entry`, or "" when it is
export function checkValue(entry, text) {
  const value = String(text).trim();
  const { type, domain } = entry;
  if (type === "int" || type === "float") {
    if (value === "") return "A number is required.";
    const isInt = INT_TEXT.test(value) || (FLOAT_TEXT.test(value) && Number.isInteger(Number(value)));
    if (type === "int" && !isInt) return "Must be a whole number.";
    if (type === "float" && !FLOAT_TEXT.test(value)) return "Must be a number.";
    if (!Number.isFinite(Number(value))) return "Must be a finite number.";
  }
  if (Array.isArray(domain)) return domain.includes(value) ? "" : `Must be one of: ${domain.join(", ")}.`;
  if (typeof domain !== "string" || !domain) return "";
  if (domain === "json") {
    try {
      JSON.parse(value);
      return "";
    } catch {
      return "Must be valid JSON.";
    }
  }
  const number = FLOAT_TEXT.test(value) ? Number(value) : NaN;
  let m;
  if ((m = SIGNED.exec(domain))) {
    if (!Number.isFinite(number)) return "Must be a number.";
    // as NodeODM checks it: a sign, when given, is the whole rule (the type is checked above)
    if (m[1] === "positive ") return number >= 0 ? "" : "Must be 0 or more.";
    if (m[1] === "negative ") return number <= 0 ? "" : "Must be 0 or less.";
    if (m[2] === "integer" && !Number.isInteger(number)) return "Must be a whole number.";
    return "";
  }
  if (PERCENT.test(domain)) {
    return Number.isFinite(number) && number >= 0 && number <= 100 ? "" : "Must be between 0 and 100.";
  }
  if ((m = RANGE.exec(domain))) {
    const low = Number(m[2]);
    const high = Number(m[3]);
    return Number.isFinite(number) && number >= low && number <= high ? "" : `Must be between ${low} and ${high}.`;
  }
  if ((m = COMPARE.exec(domain))) {
    const bound = Number(m[3]);
    const ok = { ">=": number >= bound, ">": number > bound, "<=": number <= bound, "<": number < bound }[m[2]];
    return Number.isFinite(number) && ok ? "" : `Must be ${m[2]} ${bound}.`;
  }
  return "";
}

function shown(value) {
  if (typeof value === "boolean") return value ? "true" : "false";
  if (value === null || value === undefined) return "";
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function typed(entry, text) {
  if (entry.type === "int" || entry.type === "float") return Number(String(text).trim());
  return text;
}

// An options form; `given` is [{name, value}] to start from (a task's options on restart).
export class OptionsForm {
  constructor(catalog, given = []) {
    this.catalog = catalog;
    this.fields = new Map();
    const start = new Map(given.map((o) => [o.name, o.value]));
    this.filter = h("input", {
      type: "search",
      class: "input options-filter",
      placeholder: `Filter ${catalog.length} options…`,
      "aria-label": "Filter options",
      oninput: () => this.#applyFilter(),
    });
    this.onlyChanged = h("input", { type: "checkbox", onchange: () => this.#applyFilter() });
    this.count = h("span", { class: "muted" });
    this.list = h("div", { class: "options-list" });
    for (const entry of catalog) this.list.append(this.#row(entry, start));
    this.el = h(
      "div",
      { class: "options-form" },
      h("div", { class: "options-toolbar" }, this.filter,
        h("label", { class: "check" }, this.onlyChanged, " changed only"), this.count),
      this.list,
    );
    this.#updateCount();
  }

  #row(entry, start) {
    const id = `opt-${entry.name}`;
    const initial = start.has(entry.name) ? start.get(entry.name) : entry.value;
    let input;
    if (entry.type === "bool") {
      input = h("input", { type: "checkbox", id, checked: initial === true || initial === "true" });
    } else if (entry.type === "enum" || Array.isArray(entry.domain)) {
      const choices = Array.isArray(entry.domain) ? entry.domain : [];
      input = h("select", { id, class: "input" },
        choices.map((c) => h("option", { value: c, selected: shown(initial) === c }, c)));
    } else {
      const numeric = entry.type === "int" || entry.type === "float";
      input = h("input", {
        id,
        class: "input",
        type: "text",
        inputmode: numeric ? "decimal" : "text",
        value: shown(initial),
        placeholder: shown(entry.value),
      });
    }
    const error = h("div", { class: "field-error", role: "alert", hidden: true });
    const help = `${entry.help || ""}${entry.domain && !Array.isArray(entry.domain) ? ` (${entry.domain})` : ""}`;
    const row = h(
      "div",
      { class: "option", dataset: { name: entry.name } },
      h("label", { for: id, title: help }, entry.name, h("span", { class: "hint", title: help, "aria-hidden": "true" }, "?")),
      h("div", { class: "option-input" }, input, error),
    );
    const field = { entry, input, error, row };
    this.fields.set(entry.name, field);
    const onChange = () => {
      this.#validate(field);
      row.classList.toggle("changed", this.#changed(field));
      this.#updateCount();
    };
    input.addEventListener("input", onChange);
    input.addEventListener("change", onChange);
    row.classList.toggle("changed", this.#changed(field));
    return row;
  }

  #text(field) {
    return field.entry.type === "bool" ? (field.input.checked ? "true" : "false") : field.input.value;
  }

  #changed(field) {
    return this.#text(field).trim() !== shown(field.entry.value);
  }

  #validate(field) {
    // an unchanged option is not sent (a default such as json's "" needs no check)
    const message = field.entry.type === "bool" || !this.#changed(field) ? "" : checkValue(field.entry, this.#text(field));
    setText(field.error, message);
    field.error.hidden = !message;
    field.input.setAttribute("aria-invalid", message ? "true" : "false");
    field.row.classList.toggle("invalid", !!message);
    return message;
  }

  #applyFilter() {
    const text = this.filter.value.trim().toLowerCase();
    for (const field of this.fields.values()) {
      const match = !text || field.entry.name.includes(text) || (field.entry.help || "").toLowerCase().includes(text);
      field.row.hidden = !match || (this.onlyChanged.checked && !this.#changed(field));
    }
  }

  #updateCount() {
    const changed = [...this.fields.values()].filter((f) => this.#changed(f)).length;
    setText(this.count, changed ? `${changed} changed` : "all defaults");
  }

  // [{name, value}] of every changed option, or null (with the errors shown) when one is invalid
  values() {
    let firstBad = null;
    for (const field of this.fields.values()) {
      if (this.#validate(field) && !firstBad) firstBad = field;
    }
    if (firstBad) {
      firstBad.row.hidden = false;
      firstBad.input.focus();
      return null;
    }
    return [...this.fields.values()]
      .filter((f) => this.#changed(f))
      .map((f) => ({ name: f.entry.name, value: f.entry.type === "bool" ? f.input.checked : typed(f.entry, this.#text(f).trim()) }));
  }

  // the server refused some options: show its per-option messages (the error is a JSON list)
  showServerErrors(message) {
    let items;
    try {
      items = JSON.parse(message);
    } catch {
      return false;
    }
    if (!Array.isArray(items)) return false;
    let shownAny = false;
    for (const item of items) {
      const field = this.fields.get(item?.name);
      if (!field) continue;
      setText(field.error, String(item.error));
      field.error.hidden = false;
      field.row.hidden = false;
      field.row.classList.add("invalid");
      shownAny = true;
    }
    return shownAny;
  }
}
