// The web app: signs in (the page's ?token=, or a login when the node has accounts), then polls the node.

import { Api } from "./api.js";
import { clear, h, setText } from "./dom.js";
import { FarmPanel } from "./farm.js";
import { NewTask } from "./newtask.js";
import { TaskList } from "./tasks.js";

const POLL_MS = 2500;
const api = new Api();
const app = document.getElementById("app");
const banner = document.getElementById("banner");
const summary = document.getElementById("node-summary");
const session = document.getElementById("session");

let catalog = null;
async function getCatalog() {
  if (!catalog) catalog = await api.get("/options");
  return catalog;
}

function showBanner(text) {
  setText(banner, text || "");
  banner.hidden = !text;
}

async function start() {
  let info;
  try {
    info = await api.get("/info");
  } catch (error) {
    if (/token|unauthori/i.test(error.message) || error.status === 401) return signIn(error.message);
    showBanner(`The node does not answer: ${error.message}. Retrying…`);
    setTimeout(start, POLL_MS);
    return;
  }
  showBanner("");
  renderSession();
  renderSummary(info);
  dashboard();
}

function renderSession() {
  clear(session);
  if (!api.token) return;
  if (!api.fromUrl) {
    session.append(h("button", { type: "button", class: "btn small ghost", id: "logout", onclick: logout }, "Log out"));
  }
}

async function logout() {
  api.forget();
  window.location.reload();
}

function renderSummary(info) {
  clear(summary).append(
    chip("API", info.version),
    chip("Engine", `${info.engine || "?"} ${info.engineVersion || ""}`),
    chip("Workers", info.workers ?? "?"),
    chip("Slots", info.maxParallelTasks),
    chip("Queued or running", info.taskQueueCount),
  );
}

function chip(label, value) {
  return h("span", { class: "stat" }, h("span", { class: "muted" }, label), " ", h("strong", {}, String(value)));
}

// no valid token: a login form when the node has accounts, else a field for the node's token
async function signIn(reason) {
  let auth = { loginUrl: null };
  try {
    auth = await (await fetch("/auth/info")).json();
  } catch {
    // the node token field still works
  }
  const message = h("div", { class: "form-message error", role: "alert" }, api.token ? reason : "");
  clear(app);
  if (auth.loginUrl) {
    const user = h("input", { class: "input", id: "login-user", autocomplete: "username", required: true });
    const password = h("input", { class: "input", id: "login-password", type: "password", autocomplete: "current-password", required: true });
    const form = h("form", { class: "card login", id: "login-form" },
      h("h2", {}, "Log in"), h("p", { class: "muted" }, auth.message || ""),
      h("label", { class: "field" }, h("span", {}, "Username"), user),
      h("label", { class: "field" }, h("span", {}, "Password"), password),
      message, h("div", { class: "actions" }, h("button", { class: "btn primary", type: "submit", id: "login-submit" }, "Log in")));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const answer = await api.post(auth.loginUrl, { username: user.value, password: password.value });
        api.remember(answer.token);
        clear(app);
        start();
      } catch (error) {
        setText(message, error.message);
      }
    });
    app.append(form);
    user.focus();
    return;
  }
  const token = h("input", { class: "input", id: "token-input", type: "password", autocomplete: "off" });
  const form = h("form", { class: "card login", id: "token-form" },
    h("h2", {}, "Node token"),
    h("p", { class: "muted" }, "This node needs its token. It stays in the page's address (?token=), as NodeODM does."),
    h("label", { class: "field" }, h("span", {}, "Token"), token), message,
    h("div", { class: "actions" }, h("button", { class: "btn primary", type: "submit" }, "Open")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const url = new URL(window.location.href);
    url.searchParams.set("token", token.value);
    window.location.assign(url.toString());
  });
  app.append(form);
  token.focus();
}

function dashboard() {
  const onError = (error) => showBanner(error.message);
  const tasks = new TaskList(api, getCatalog, onError);
  const farm = new FarmPanel(api);
  const creator = new NewTask(api, getCatalog, (uuid) => {
    tasks.show(uuid);
    tasks.refresh().catch(onError);
  });
  clear(app).append(h("div", { class: "main-col" }, creator.el, tasks.el), h("aside", { class: "side-col" }, farm.el));

  let running = false;
  async function poll() {
    if (running) return;
    running = true;
    try {
      const [info] = await Promise.all([api.get("/info"), tasks.refresh(), farm.refresh()]);
      renderSummary(info);
      showBanner("");
      document.body.dataset.polled = String(Date.now());
    } catch (error) {
      showBanner(`Update failed: ${error.message}. Retrying…`);
    } finally {
      running = false;
    }
  }
  poll();
  setInterval(() => { if (!document.hidden) poll(); }, POLL_MS);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
}

start();
