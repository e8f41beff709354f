// The console: sign in with a key, ask /v1/whoami what kind it is, show that kind's views,
// and refresh the shown view every few seconds (polling /v1: no second API).

import { ApiError, forgetKey, get, saveKey, savedKey } from "./api.js";
import { cdnView, ledgerView, rolloutsView } from "./books.js";
import { h } from "./dom.js";
import { devicesView, fleetView } from "./fleet.js";
import { flywheelView } from "./flywheel.js";
import { jobsView } from "./jobs.js";

const POLL_MS = 2000;

const VIEWS = {
  admin: () => [fleetView(), jobsView("admin"), cdnView(), ledgerView(), rolloutsView(), flywheelView()],
  customer: () => [jobsView("customer"), rolloutsView("customer"), flywheelView()],
  owner: () => [devicesView(), flywheelView()],
};
const KIND_NAMES = { admin: "operator", customer: "customer", owner: "device owner" };

const $ = (id) => document.getElementById(id);
let views = [];
let current = null;
let timer = null;
let busy = false;
let again = false;

function status(text, bad = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", bad);
}

function showSignIn(message = "") {
  clearTimeout(timer);
  views = [];
  current = null;
  $("sign-in").hidden = false;
  $("view").hidden = true;
  $("view").replaceChildren();
  $("tabs").replaceChildren();
  $("who").textContent = "";
  $("sign-out").hidden = true;
  $("sign-in-error").textContent = message;
  document.body.dataset.kind = "";
}

async function signIn(key) {
  let who;
  try {
    who = await get("/v1/whoami", key);
  } catch (e) {
    forgetKey();
    showSignIn(e instanceof ApiError && e.status === 401 ? "The coordinator does not know this key (or it was revoked)." : `Cannot sign in: ${e.message}`);
    return;
  }
  if (!VIEWS[who.kind]) {
    forgetKey();
    showSignIn(`A ${who.kind} key has no console: sign in with an admin, customer or owner key.`);
    return;
  }
  saveKey(key);
  document.body.dataset.kind = who.kind;
  $("sign-in").hidden = true;
  $("view").hidden = false;
  $("sign-out").hidden = false;
  const name = who.name || who.id;
  $("who").replaceChildren(
    name === KIND_NAMES[who.kind] ? "" : `${KIND_NAMES[who.kind]} `,
    h("strong", { id: "who-name" }, name),
    " ",
    h("code", {}, who.id),
  );
  views = VIEWS[who.kind]();
  $("tabs").replaceChildren(
    ...views.map((v) =>
      h("button", { type: "button", class: "tab", dataset: { view: v.id }, onclick: () => show(v.id) }, v.title),
    ),
  );
  const wanted = location.hash.slice(1);
  show(views.some((v) => v.id === wanted) ? wanted : views[0].id);
}

function show(id) {
  current = views.find((v) => v.id === id);
  history.replaceState(null, "", `#${id}`);
  for (const b of $("tabs").children) b.classList.toggle("active", b.dataset.view === id);
  $("view").replaceChildren(h("p", { class: "empty" }, "loading…"));
  refresh();
}

/** Render the current view now (and again right after, if asked while one is in flight). */
async function refresh() {
  clearTimeout(timer);
  if (!current) return;
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  const view = current;
  try {
    const parts = await view.render(refresh);
    if (view === current) {
      $("view").replaceChildren(...parts);
      status(`updated ${new Date().toLocaleTimeString()}`);
    }
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      forgetKey();
      showSignIn("The key stopped working (revoked?): sign in again.");
      busy = false;
      return;
    }
    status(`could not update: ${e.message}`, true);
  }
  busy = false;
  if (again) {
    again = false;
    refresh();
    return;
  }
  if (current) timer = setTimeout(refresh, document.hidden ? POLL_MS * 5 : POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("key").value.trim();
    $("key").value = "";
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", () => {
    forgetKey();
    showSignIn("Signed out.");
  });
  const key = savedKey();
  if (key) signIn(key);
  else showSignIn();
});
