// The shopping_cart page's script (served as /page.js). It reads the state
// the server rendered into the data- attributes of #app, long-polls
// `status`, posts to `cart`, and keeps the page showing the newest state.
"use strict";
(() => {
  // Back-off after an error: the ceiling doubles per failure up to the cap,
  // and the delay is drawn from the upper half of it, so pages that lost the
  // server together do not return together.
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  // Longest `Retry-After` honoured; a bigger one is treated as this.
  const RETRY_AFTER_CAP_MS = 600000;
  // A poll with no answer after this long is abandoned and counted as an
  // error (a connection that died silently). The server holds a poll at
  // most 300 s.
  const POLL_WATCHDOG_MS = 330000;
  // A poll still open after this long is being held by the server: the
  // page is connected. (A refused or broken connection fails sooner.)
  const HELD_AFTER_MS = 1000;

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

  // What the page shows: the server's state at (epoch, version), as
  // rendered into the page, then as updated by newer answers only.
  const state = {
    epoch: app.dataset.epoch,
    version: Number(app.dataset.version),
    count: Number(ui.count.textContent),
    inCart: app.dataset.inCart === "true",
    busy: false,     // a cart request is in flight
    cartAnswers: 0,  // cart answers received, to spot a stale cart refresh
  };

  // Take an answer's count only if it is newer than what is shown: the same
  // epoch and a higher version, or another epoch (the server's version
  // sequence restarted, so its state wins whatever the numbers say). A late
  // or repeated answer can therefore never put back an older count.
  // Returns "newer", "same", "older" or "invalid".
  function accept(data) {
    if (!data || typeof data.epoch !== "string" ||
        !Number.isSafeInteger(data.version) || !Number.isSafeInteger(data.inventorycount)) {
      return "invalid";
    }
    const restarted = data.epoch !== state.epoch;
    if (!restarted) {
      if (data.version === state.version) return "same";
      if (data.version < state.version) return "older";
    }
    state.epoch = data.epoch;
    state.version = data.version;
    state.count = data.inventorycount;
    if (state.count > 0 && ui.message.dataset.kind === "sold-out") showMessage("", "");
    render();
    if (restarted) refreshCart();
    return "newer";
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
      // Drop it if a cart answer came meanwhile (it is newer), or if the
      // page is of yet another epoch (that change refreshes again).
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

  // ---- The long poll ------------------------------------------------------

  let failures = 0;    // consecutive failed polls, for the back-off
  let generation = 0;  // bumped to abandon the poll in flight
  let inFlight = null; // AbortController of the poll in flight
  let timer = null;    // pending start of the next poll

  // Delay before the next poll after `failures` failures in a row, never
  // sooner than the server's `Retry-After`.
  function backoffDelay(retryAfterMs) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures, 16));
    const jittered = ceiling / 2 + Math.random() * (ceiling / 2);
    return Math.min(retryAfterMs, RETRY_AFTER_CAP_MS) + jittered;
  }

  // `Retry-After` is either seconds or an HTTP date; returns milliseconds.
  function parseRetryAfter(value) {
    if (!value) return 0;
    if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
    const at = Date.parse(value);
    return Number.isNaN(at) ? 0 : Math.max(0, at - Date.now());
  }

  function pollSoon(delayMs) {
    clearTimeout(timer);
    timer = setTimeout(poll, delayMs);
  }

  function retryLater(retryAfterMs) {
    const delay = backoffDelay(retryAfterMs);
    failures += 1;
    showConnection("retrying", "Reconnecting in " + Math.ceil(delay / 1000) + " s…");
    clearTimeout(timer);
    timer = setTimeout(() => {
      showConnection("retrying", "Reconnecting…");
      poll();
    }, delay);
  }

  async function poll() {
    const mine = ++generation;
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const watchdog = setTimeout(() => controller.abort(), POLL_WATCHDOG_MS);
    const held = setTimeout(() => {
      if (mine === generation) showConnection("live", "Live");
    }, HELD_AFTER_MS);
    const url = "status?since=" + encodeURIComponent(state.version) +
                "&epoch=" + encodeURIComponent(state.epoch);
    try {
      const response = await fetch(url, {
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: controller.signal,
      });
      if (response.status === 200) {
        const outcome = accept(await response.json());
        if (mine !== generation) return;
        if (outcome === "older" || outcome === "invalid") {
          // A server behind this page (or not speaking the contract) would
          // answer again at once: wait instead of spinning.
          retryLater(0);
          return;
        }
      } else if (response.status !== 204) {
        // 503 (too many waiters, or shutting down) or anything unexpected.
        if (mine !== generation) return;
        retryLater(parseRetryAfter(response.headers.get("Retry-After")));
        return;
      }
      if (mine !== generation) return;
      // 200 with news, or 204 (the server's poll timeout): ask again at
      // once with the cursor the page now has.
      failures = 0;
      showConnection("live", "Live");
      pollSoon(0);
    } catch (err) {
      if (mine !== generation) return; // abandoned on purpose
      retryLater(0);
    } finally {
      clearTimeout(watchdog);
      clearTimeout(held);
    }
  }

  // Back online after an outage, or shown again from the back/forward
  // cache: ask at once rather than after the back-off, and drop a poll that
  // may hang on a connection that died meanwhile.
  function pollNow() {
    failures = 0;
    pollSoon(0);
  }
  window.addEventListener("online", pollNow);
  window.addEventListener("pageshow", (event) => {
    if (event.persisted) pollNow();
  });

  // ---- The cart -----------------------------------------------------------

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
  // server rendered the page is not lost: the poll names the version the
  // page was rendered at.
  if (document.readyState === "complete") poll();
  else window.addEventListener("load", () => poll(), { once: true });
})();
