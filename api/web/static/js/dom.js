// DOM helpers. Text from the server only ever goes through textContent or attributes, never parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key in PROPS) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

const PROPS = { value: 1, checked: 1, disabled: 1, hidden: 1, selected: 1, multiple: 1, open: 1 };

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function setText(el, text) {
  const value = String(text ?? "");
  if (el.textContent !== value) el.textContent = value;
}

export function formatBytes(n) {
  if (n === undefined || n === null || Number.isNaN(Number(n))) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 100 || unit === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(ms) {
  if (ms === undefined || ms === null || ms < 0) return "–";
  const s = Math.floor(ms / 1000);
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const seconds = s % 60;
  const two = (v) => String(v).padStart(2, "0");
  return hours ? `${hours}:${two(minutes)}:${two(seconds)}` : `${minutes}:${two(seconds)}`;
}

export function formatAgo(ms) {
  if (ms === undefined || ms === null) return "–";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

export function formatDate(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  const two = (v) => String(v).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}`;
}

// A modal dialog built from nodes; resolves with the value of the button pressed (or null when dismissed).
export function dialog(title, body, buttons) {
  return new Promise((resolve) => {
    const box = h("dialog", { class: "modal" });
    const footer = h("div", { class: "modal-actions" });
    for (const b of buttons) {
      footer.append(
        h("button", {
          type: "button",
          class: b.class || "btn",
          "data-action": b.value,
          onclick: async () => {
            if (b.before && !(await b.before())) return;
            box.close(b.value);
          },
        }, b.label),
      );
    }
    box.append(h("h2", {}, title), h("div", { class: "modal-body" }, body), footer);
    box.addEventListener("close", () => {
      box.remove();
      resolve(box.returnValue && box.returnValue !== "cancel" ? box.returnValue : null);
    });
    document.body.append(box);
    box.showModal();
  });
}
