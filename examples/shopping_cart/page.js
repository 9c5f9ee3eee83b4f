// The shopping_cart page's script (served as /page.js, an ES module). It
// reads the state the server rendered into the data- attributes of #app,
// follows `status` with the crate's browser client (./longpoll.js: the
// long-poll loop, the cursor, the back-off after errors and 503s, the resync
// after a server restart), posts to `cart`, and keeps the page showing the
// newest state.
import { subscribe } from "./longpoll.js";

const app = document.getElementById("app");
const $ = (id) => document.getElementById(id);
const ui = {
  count: $("count"),
  inventory: $("inventory"),
  barFill: $("bar-fill"),
  soldOut: $("sold-out"),
  inCart: $("in-cart"),
  add: $("add-button"),
  remove: $("remove-button"),
  message: $("message"),
  connection: $("connection"),
  session: $("session"),
};

const session = app.dataset.session;
const inventory = Number(app.dataset.inventory);

// What the page shows: the server's state at (epoch, version), as rendered
// into the page, then as updated by newer answers only.
const state = {
  epoch: app.dataset.epoch,
  version: Number(app.dataset.version),
  count: Number(ui.count.textContent),
  inCart: app.dataset.inCart === "true",
  busy: false,     // a cart request is in flight
  cartAnswers: 0,  // cart answers received, to spot a stale cart refresh
};

// Shows an answer's count (a poll's or a cart request's) if it is newer
// than what is shown: the same epoch and a higher version, or another epoch
// (the server's version sequence restarted, so its state wins whatever the
// numbers say). The client delivers each poll answer once and only if it is
// newer than the last one it delivered, but cart answers move the page
// ahead of it: the poll answer for the version a cart answer already showed
// comes next, and one overtaken by a cart answer must not put back an older
// count. Returns whether the page changed.
function accept(data) {
  if (!data || typeof data.epoch !== "string" ||
      !Number.isSafeInteger(data.version) || !Number.isSafeInteger(data.inventorycount)) {
    return false;
  }
  if (data.epoch === state.epoch && data.version <= state.version) return false;
  state.epoch = data.epoch;
  state.version = data.version;
  state.count = data.inventorycount;
  if (state.count > 0 && ui.message.dataset.kind === "sold-out") showMessage("", "");
  render();
  return true;
}

// After a restart the server's carts may have been reset too, and long-poll
// answers do not say what is in this visitor's cart: read it back from a
// fresh copy of the page (a plain GET; the session cookie goes with it).
async function refreshCart() {
  const answersBefore = state.cartAnswers;
  try {
    const response = await fetch("./", { cache: "no-store" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("app");
    // Drop it if a cart answer came meanwhile (it is newer), or if the page
    // is of another epoch than the one shown now (the state of the new epoch
    // has not been shown yet, or yet another restart refreshes again).
    if (!fresh || state.cartAnswers !== answersBefore || state.busy ||
        fresh.dataset.epoch !== state.epoch) {
      return;
    }
    state.inCart = fresh.dataset.inCart === "true";
    render();
  } catch (_) {
    // The next cart answer says it anyway.
  }
}

function showMessage(kind, text) {
  ui.message.dataset.kind = kind;
  ui.message.textContent = text;
}

function render() {
  const text = String(state.count);
  if (ui.count.textContent !== text) {
    // Only touch the live region when the number changes, so that screen
    // readers announce changes and nothing else.
    ui.count.textContent = text;
    ui.count.classList.add("bump");
    setTimeout(() => ui.count.classList.remove("bump"), 600);
  }
  const soldOut = state.count <= 0;
  if (inventory > 0) {
    const left = Math.max(0, Math.min(1, state.count / inventory));
    ui.barFill.style.width = (left * 100).toFixed(1) + "%";
  }
  ui.soldOut.hidden = !soldOut;
  ui.inCart.hidden = !state.inCart;
  ui.add.hidden = state.inCart;
  ui.remove.hidden = !state.inCart;
  ui.add.disabled = state.busy || soldOut;
  ui.remove.disabled = state.busy;
}

function showConnection(kind, text) {
  ui.connection.dataset.state = kind;
  ui.connection.textContent = text;
}

// ---- The long poll --------------------------------------------------------

let sub = null;        // the running subscription
let generation = 0;    // bumped at each start and stop: only `sub` sets the badge
let retryTimer = null; // turns "Reconnecting in N s" into "Reconnecting"

// The badge: live, or retrying with the delay the client chose (never
// shorter than the server's `Retry-After`).
function showStatus(kind, detail) {
  clearTimeout(retryTimer);
  if (kind === "live") {
    showConnection("live", "Live");
  } else if (kind === "retrying") {
    showConnection("retrying", "Reconnecting in " + Math.ceil(detail.delay / 1000) + " s…");
    retryTimer = setTimeout(() => showConnection("retrying", "Reconnecting…"), detail.delay);
  } else if (kind === "connecting") {
    showConnection("connecting", "Connecting…");
  }
}

// Follows `status` from `cursor`. The client sends it as `since` and
// `epoch`, polls again at once after a 200 or a 204, and waits after an
// error or a 503. A restart (another epoch) arrives as a resync, then the
// new server's state.
function follow(cursor) {
  const mine = ++generation;
  sub = subscribe("status", {
    format: "latest",
    cursor,
    onUpdate: accept,
    onResync: () => refreshCart(),
    // A subscription stopped to start over has nothing more to show.
    onStatus: (kind, detail) => {
      if (mine === generation) showStatus(kind, detail);
    },
  });
}

// Stops the subscription (it keeps its cursor).
function stop() {
  generation += 1;
  clearTimeout(retryTimer);
  sub.stop();
}

// Stops and starts again at once from where it was: shown again from the
// back/forward cache (left with no request open, so that the browser may
// keep it there). Coming back online is the client's business.
function startOver() {
  if (!sub) return;
  stop();
  follow(sub.cursor() ?? { epoch: state.epoch, version: state.version });
}
window.addEventListener("pagehide", (event) => {
  if (event.persisted && sub) stop();
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted) startOver();
});

// ---- The cart -------------------------------------------------------------

async function changeCart(action, button) {
  state.busy = true;
  showMessage("", "");
  render();
  let focusOther = document.activeElement === button;
  try {
    const response = await fetch("cart", {
      method: "POST",
      cache: "no-store",
      headers: {
        "Content-Type": "application/x-www-form-urlencoded",
        Accept: "application/json",
      },
      body: new URLSearchParams({ session, action }),
    });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      // Not JSON: reported below by status.
    }
    if (data) accept(data);
    if (data && typeof data.in_cart === "boolean") {
      state.inCart = data.in_cart;
      state.cartAnswers += 1;
    }
    if (response.status === 409) {
      showMessage("sold-out", "Sold out: someone took the last copy just before you.");
      focusOther = false;
    } else if (!response.ok) {
      showMessage("error", "The server refused (" + response.status +
        (data && data.error ? ": " + data.error : "") + "). Please try again.");
      focusOther = false;
    }
  } catch (err) {
    showMessage("error", "Could not reach the server. Please try again.");
    focusOther = false;
  } finally {
    state.busy = false;
    render();
  }
  // Keep keyboard focus on the button that replaced the one pressed.
  if (focusOther) (state.inCart ? ui.remove : ui.add).focus();
}

ui.add.addEventListener("click", () => changeCart("add", ui.add));
ui.remove.addEventListener("click", () => changeCart("remove", ui.remove));

ui.inventory.textContent = String(inventory);
ui.session.textContent = session.slice(0, 8);
ui.session.title = session;
render();
// Start after the load event, so the browser does not show the page as
// still loading while the first poll is held. A change made since the
// server rendered the page is not lost: the first poll names the version
// the page was rendered at.
const start = () => follow({ epoch: state.epoch, version: state.version });
if (document.readyState === "complete") start();
else window.addEventListener("load", start, { once: true });
