/**
 * The browser client of the `longpoll` crate's HTTP layer: one ES module,
 * no dependencies. It follows one endpoint (or several keys of a hub) by
 * long poll or by server-sent events, and calls you back with every update
 * once, in order.
 *
 * ```js
 * import { subscribe } from "/longpoll.js";
 *
 * const stop = new AbortController();
 * subscribe("/rooms/lobby/messages", {
 *   events: "/rooms/lobby/events",          // optional: SSE, with the long poll as fallback
 *   onUpdate(data, { version }) { show(data); },
 *   onResync({ reason }) { clear(); },      // a new baseline follows: replace what you show
 *   onStatus(state) { badge.textContent = state; },
 *   signal: stop.signal,
 * });
 * ```
 *
 * What it does for you:
 *
 * - **The cursor.** It keeps the epoch and version of the last update it
 *   delivered, sends them back with every request (`since` and `epoch`, or
 *   `cursors` for several keys), and, unless a resync comes first, never
 *   delivers an update at or below it in the same epoch: a late, repeated
 *   or overlapping answer after a reconnect is dropped, never shown.
 * - **Long polls.** `200` answers are delivered, `204` (the server's timeout)
 *   polls again at once. The envelope (`{"epoch","version","updates","resync"}`)
 *   carries every update since the cursor, so a client back from a network
 *   cut gets every update it missed, oldest first.
 * - **Resyncs.** When the client cannot simply continue (`"lagged"`: more
 *   updates went by than the server keeps; `"other-epoch"`: the server
 *   restarted, or its sequence is not the client's; `"ahead"`: the server
 *   is behind the cursor; `"initial"`: no cursor yet), `onResync` is called,
 *   then the new baseline's updates follow: replace what the page shows.
 * - **Failures.** After a network error, a `503` or any other unexpected
 *   answer it waits, then tries again: never sooner than the server's
 *   `Retry-After`, plus a capped exponential backoff with jitter (the delay
 *   is drawn from the upper half of `min(cap, base * 2^failures)`), so pages
 *   that lost a server together do not return together. A browser back
 *   online (the `online` event) retries at once, and abandons a poll in
 *   flight (it may hang on a connection that died meanwhile).
 * - **SSE with a fallback.** With `events`, it reads the endpoint's event
 *   stream (`id: <epoch>-<version>`, `event: resync`), reopening it from its
 *   own cursor after a drop. When `EventSource` is missing, or a stream
 *   fails before it opens (a `503`, a proxy that cannot stream), the long
 *   poll takes over; it hands back to SSE after its next answer, unless the
 *   stream failed right after a long poll succeeded, in which case the
 *   subscription keeps to long polls.
 * - **Stopping.** Aborting `signal` (or calling `stop()`) aborts the request
 *   in flight, closes the stream and cancels any wait: no request and no
 *   callback follow, except `onStatus("stopped")`.
 * - **Other origins.** The cursor travels in the query and no request sets
 *   a header of its own, so a page on another origin polls without a CORS
 *   preflight. The server must allow the page's origin, and expose `ETag`
 *   and `Retry-After` (`longpoll::http::EXPOSED_HEADERS`).
 *
 * Every update's `data` is JSON (the server's encoder writes it): the
 * envelope embeds it, and an event's `data:` line is parsed with
 * `JSON.parse`.
 *
 * @module longpoll
 */

/**
 * Where a subscription stands: the last update it delivered.
 *
 * @typedef {object} Cursor
 * @property {string} epoch The version sequence the update belongs to
 *   (16 hex digits from this crate's servers).
 * @property {number} version Its version.
 */

/**
 * What `onUpdate` learns besides the data.
 *
 * @typedef {object} UpdateMeta
 * @property {string} epoch The update's epoch.
 * @property {number} version The update's version.
 * @property {string} [key] Its key, in a subscription over several keys.
 */

/**
 * Why what the page shows must be replaced; the new baseline's updates
 * follow, oldest first.
 *
 * @typedef {object} ResyncInfo
 * @property {"initial"|"lagged"|"ahead"|"other-epoch"} reason
 * @property {number} [skipped] With `"lagged"`: how many versions are gone.
 * @property {string} epoch The epoch of the new baseline.
 * @property {string} [key] Its key, in a subscription over several keys.
 */

/**
 * The state `onStatus` reports, and what comes with it.
 *
 * @typedef {object} StatusDetail
 * @property {"poll"|"sse"} transport How updates are received now.
 * @property {number} [delay] With `"retrying"`: milliseconds until the next
 *   attempt.
 * @property {number} [attempt] With `"retrying"`: failures in a row, from 1.
 * @property {number} [status] With `"retrying"`: the HTTP status, if the
 *   server answered.
 * @property {number} [retryAfter] With `"retrying"`: the server's
 *   `Retry-After`, in milliseconds (0 if none).
 * @property {Error} [error] With `"retrying"`: what failed, when the server
 *   did not answer or answered outside the protocol.
 */

/**
 * @typedef {object} Options
 * @property {(data: any, meta: UpdateMeta) => void} onUpdate Called once per
 *   update, in order.
 * @property {(info: ResyncInfo) => void} [onResync] Called before a new
 *   baseline.
 * @property {(state: "connecting"|"live"|"retrying"|"stopped", detail: StatusDetail) => void} [onStatus]
 *   Called when the connection state or the transport changes.
 * @property {AbortSignal} [signal] Stops the subscription when aborted.
 * @property {string|URL} [events] The event-stream URL of the same
 *   broadcaster; makes `"sse"` the default transport.
 * @property {"sse"|"poll"} [transport] `"sse"` (the default with `events`):
 *   SSE with the long poll as fallback; `"poll"`: long polls only.
 * @property {Cursor} [cursor] Where to start (say, the state the server
 *   rendered into the page); without it the first answer is a baseline.
 * @property {string[]} [keys] Several keys of a hub, polled at once: `url`
 *   is then the multi-key endpoint (`?keys=..&cursors=..`). A key cannot
 *   hold a comma. Long poll only.
 * @property {Object<string, Cursor>} [cursors] With `keys`: where each key
 *   starts.
 * @property {"envelope"|"latest"} [format] What a `200` carries:
 *   `"envelope"` (the default; `BodyFormat::Envelope`), or `"latest"`
 *   (`BodyFormat::Latest`: the newest update alone, its cursor read from
 *   the `ETag`, else from the body's `epoch` and `version` fields).
 * @property {number} [timeout] Seconds the server may hold a poll (default
 *   25; at most the server's maximum, 300 by default).
 * @property {{base?: number, cap?: number}} [retry] The backoff, in
 *   milliseconds: the first ceiling (default 500) and the largest (default
 *   30000).
 * @property {RequestCredentials} [credentials] For `fetch` (default
 *   `"same-origin"`); `"include"` also opens streams `withCredentials`.
 */

/**
 * A running subscription.
 *
 * @typedef {object} Subscription
 * @property {() => void} stop Stops it, as aborting `signal` does.
 * @property {(key?: string) => (Cursor|null)} cursor The cursor of the
 *   subscription (or of `key`, over several keys); `null` before the first
 *   update.
 * @property {"poll"|"sse"} transport How updates are received now.
 * @property {Promise<void>} done Resolves once stopped.
 */

/** A `Retry-After` longer than this (10 min) is taken as this. */
const MAX_RETRY_AFTER_MS = 600000;
/** A poll with no answer this long after its timeout is abandoned. */
const WATCHDOG_SLACK_MS = 15000;
/** A poll still held after this long means the server is reachable. */
const LIVE_AFTER_MS = 1000;

/**
 * Follows `url` and calls `options.onUpdate` with every update after the
 * cursor, once each, in order, until stopped.
 *
 * @param {string|URL} url The long-poll endpoint (relative to the page).
 * @param {Options} options
 * @returns {Subscription}
 * @throws {TypeError} When the options cannot work (no `onUpdate`, `"sse"`
 *   without `events`, keys that are empty, repeated or hold a comma).
 */
export function subscribe(url, options) {
  const o = options || {};
  if (typeof o.onUpdate !== "function") {
    throw new TypeError("longpoll: options.onUpdate must be a function");
  }
  const keys = o.keys == null ? null : Array.from(o.keys, String);
  if (keys && (keys.length === 0 || new Set(keys).size !== keys.length ||
               keys.some((k) => k === "" || k.includes(",")))) {
    throw new TypeError("longpoll: keys must be one or more distinct, non-empty keys without commas");
  }
  const format = o.format ?? "envelope";
  if (format !== "envelope" && (format !== "latest" || keys)) {
    throw new TypeError('longpoll: format is "envelope" or, for one key, "latest"');
  }
  const transportOption = o.transport ?? (o.events != null ? "sse" : "poll");
  if (transportOption !== "poll" && (transportOption !== "sse" || o.events == null || keys)) {
    throw new TypeError('longpoll: transport is "poll", or "sse" with an events URL and one key');
  }
  const here = globalThis.location ? globalThis.location.href : undefined;
  const pollUrl = new URL(url, here);
  const canStream = transportOption === "sse" && typeof globalThis.EventSource === "function";
  const eventsUrl = canStream ? new URL(o.events, here) : null;
  const timeout = o.timeout ?? 25;
  const base = o.retry?.base ?? 500;
  const cap = o.retry?.cap ?? 30000;
  const credentials = o.credentials ?? "same-origin";

  // One cursor per key ("" without keys). After a resync and before its
  // first update it is a placeholder at version -1: anything of its epoch
  // is newer, and it is never sent.
  const cursors = new Map();
  const start = (c) => {
    if (!c || typeof c.epoch !== "string" || !Number.isSafeInteger(c.version)) {
      throw new TypeError("longpoll: a cursor is {epoch: string, version: integer}");
    }
    return { epoch: c.epoch, version: c.version };
  };
  if (keys) {
    for (const k of keys) if (o.cursors?.[k]) cursors.set(k, start(o.cursors[k]));
  } else if (o.cursor) {
    cursors.set("", start(o.cursor));
  }

  const stopper = new AbortController();
  const signal = stopper.signal;
  if (o.signal) {
    if (o.signal.aborted) stopper.abort();
    else o.signal.addEventListener("abort", () => stopper.abort(), { once: true });
  }

  let transport = canStream ? "sse" : "poll";
  let sseBroken = false; // a stream failed right after a poll succeeded
  let lastPollOk = false;
  let failures = 0;
  let shown = "";

  const call = (fn, ...args) => {
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (e) {
      report(e); // the subscription goes on
    }
  };

  const status = (state, detail) => {
    const now = state + " " + transport;
    if (now === shown && state !== "retrying") return;
    shown = now;
    call(o.onStatus, state, { transport, ...detail });
  };

  const sendable = (c) => (c && c.version >= 0 ? c : null);

  // A new baseline for `key`: tell the page, and start over.
  const resync = (key, info) => {
    if (signal.aborted) return;
    cursors.set(key, { epoch: info.epoch, version: -1 });
    const { reason, skipped, epoch } = info;
    const out = skipped === undefined ? { reason, epoch } : { reason, skipped, epoch };
    call(o.onResync, keys ? { ...out, key } : out);
  };

  // One update: delivered if newer than the cursor, or of another epoch
  // (a resync the server did not announce). Returns whether it was.
  const offer = (key, epoch, version, data) => {
    if (signal.aborted) return false;
    const c = cursors.get(key);
    if (c && c.epoch === epoch) {
      if (version <= c.version) return false;
    } else {
      resync(key, { reason: c ? "other-epoch" : "initial", epoch });
    }
    cursors.set(key, { epoch, version });
    call(o.onUpdate, data, keys ? { epoch, version, key } : { epoch, version });
    return true;
  };

  const applyEnvelope = (env, key) => {
    let news = false;
    if (env.resync) {
      resync(key, { ...env.resync, epoch: env.epoch });
      news = true;
    }
    for (const u of env.updates) news = offer(key, env.epoch, u.version, u.data) || news;
    return news;
  };

  // A `200`'s body; returns whether it brought anything new.
  const apply = (body, etag) => {
    if (format === "latest") {
      const c = parseId((etag || "").replace(/^W\//, "").replace(/^"(.*)"$/, "$1")) ??
        (body && typeof body.epoch === "string" && Number.isSafeInteger(body.version)
          ? { epoch: body.epoch, version: body.version } : null);
      if (!c) throw new Error("longpoll: a 200 without a readable ETag (expose it to other origins)");
      return offer("", c.epoch, c.version, body);
    }
    const envelopes = keys ? body && body.answers : [body];
    if (!Array.isArray(envelopes) || !envelopes.every(isEnvelope)) {
      throw new Error("longpoll: a 200 that is not the protocol's envelope");
    }
    let news = false;
    for (const env of envelopes) {
      const key = keys ? env.key : "";
      if (!keys || keys.includes(key)) news = applyEnvelope(env, key) || news;
    }
    return news;
  };

  let wake = null;
  const sleep = (ms) => new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      wake = null;
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
    wake = done;
  });
  // The poll in flight: `online` aborts it, since it may hang on a
  // connection that died while the network was gone.
  let inflight = null;
  const BACK_ONLINE = new Error("longpoll: back online");
  const online = () => {
    failures = 0;
    inflight?.abort(BACK_ONLINE);
    if (wake) wake();
  };
  globalThis.addEventListener?.("online", online);
  signal.addEventListener("abort", () => globalThis.removeEventListener?.("online", online));

  // Waits before the next attempt: `Retry-After`, plus the backoff.
  const fail = (detail) => {
    const ceiling = Math.min(cap, base * 2 ** Math.min(failures, 30));
    const retryAfter = detail.retryAfter ?? 0;
    const delay = Math.min(retryAfter, MAX_RETRY_AFTER_MS) + ceiling / 2 + Math.random() * (ceiling / 2);
    failures += 1;
    status("retrying", { ...detail, retryAfter, delay, attempt: failures });
    return sleep(delay);
  };

  const pollRequest = () => {
    const u = new URL(pollUrl);
    const q = u.searchParams;
    if (keys) {
      q.set("keys", keys.join(","));
      q.set("cursors", keys.map((k) => idOf(sendable(cursors.get(k)))).join(","));
      q.set("timeout", String(timeout));
    } else {
      const c = sendable(cursors.get(""));
      if (c) {
        q.set("since", String(c.version));
        q.set("epoch", c.epoch);
      }
      // Without a cursor, the current state at once, in either format.
      q.set("timeout", c ? String(timeout) : "0");
    }
    return u;
  };

  const OK = {};
  const pollOnce = async () => {
    const attempt = new AbortController();
    inflight = attempt;
    const abort = () => attempt.abort();
    signal.addEventListener("abort", abort);
    const watchdog = setTimeout(abort, timeout * 1000 + WATCHDOG_SLACK_MS);
    const held = setTimeout(() => status("live"), LIVE_AFTER_MS);
    let outcome;
    try {
      const resp = await fetch(pollRequest(), { cache: "no-store", credentials, signal: attempt.signal });
      if (resp.status === 200) {
        const body = await resp.json();
        if (signal.aborted) return;
        outcome = apply(body, resp.headers.get("ETag"))
          ? OK
          : { status: 200, error: new Error("longpoll: the server answered nothing newer than the cursor") };
      } else if (resp.status === 204) {
        outcome = OK;
      } else {
        outcome = { status: resp.status, retryAfter: parseRetryAfter(resp.headers.get("Retry-After")) };
        resp.body?.cancel().catch(() => {});
      }
    } catch (error) {
      outcome = { error };
    } finally {
      inflight = null;
      clearTimeout(watchdog);
      clearTimeout(held);
      signal.removeEventListener("abort", abort);
    }
    if (signal.aborted) return;
    // Back online: poll again at once, from the same cursor.
    if (attempt.signal.reason === BACK_ONLINE) return;
    if (outcome === OK) {
      failures = 0;
      lastPollOk = true;
      status("live");
      if (canStream && !sseBroken) {
        transport = "sse";
        status("connecting");
      }
      return;
    }
    lastPollOk = false;
    await fail(outcome);
  };

  // One event stream, until it fails; resolves with whether it opened.
  const streamOnce = () => new Promise((resolve) => {
    const u = new URL(eventsUrl);
    const c = sendable(cursors.get(""));
    if (c) {
      u.searchParams.set("since", String(c.version));
      u.searchParams.set("epoch", c.epoch);
    }
    const es = new EventSource(u, { withCredentials: credentials === "include" });
    let opened = false;
    let pending = null; // a resync, told with the epoch of its first update
    const end = () => {
      es.close();
      signal.removeEventListener("abort", end);
      resolve(opened);
    };
    signal.addEventListener("abort", end);
    es.onopen = () => {
      opened = true;
      failures = 0;
      status("live");
    };
    es.addEventListener("resync", (e) => {
      const info = parseJson(e.data);
      if (info && typeof info.reason === "string") pending = info;
    });
    es.onmessage = (e) => {
      const id = parseId(e.lastEventId);
      const data = parseJson(e.data);
      if (!id || data === undefined) {
        report(new Error("longpoll: an event without an <epoch>-<version> id or JSON data"));
        return;
      }
      if (pending) resync("", { ...pending, epoch: id.epoch });
      pending = null;
      offer("", id.epoch, id.version, data);
    };
    // A dropped connection, a refused stream, or the server's `error` event.
    es.onerror = end;
  });

  const streamStep = async () => {
    const opened = await streamOnce();
    if (signal.aborted) return;
    if (!opened) {
      // The long poll takes over, and can read the status and Retry-After.
      if (lastPollOk) sseBroken = true;
      transport = "poll";
      status("connecting");
      return;
    }
    lastPollOk = false;
    await fail({ error: new Error("longpoll: the event stream was closed") });
  };

  const done = (async () => {
    status("connecting");
    while (!signal.aborted) {
      if (transport === "sse") await streamStep();
      else await pollOnce();
    }
    status("stopped");
  })();

  return {
    stop: () => stopper.abort(),
    cursor: (key) => {
      const c = sendable(cursors.get(keys ? key : ""));
      return c ? { ...c } : null;
    },
    get transport() {
      return transport;
    },
    done,
  };
}

/** Reports `e` as an uncaught error, without stopping anything. */
function report(e) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(e);
  else setTimeout(() => { throw e; });
}

function isEnvelope(env) {
  return !!env && typeof env.epoch === "string" && Number.isSafeInteger(env.version) &&
    Array.isArray(env.updates) && env.updates.every((u) => u && Number.isSafeInteger(u.version)) &&
    (env.resync === undefined || (!!env.resync && typeof env.resync.reason === "string"));
}

/** `<epoch>-<version>`, as in an SSE `id:` and an ETag; `""` for none. */
function idOf(c) {
  return c ? c.epoch + "-" + c.version : "";
}

/** Reads `<epoch>-<version>` back; `null` if it is not one. */
function parseId(id) {
  const i = typeof id === "string" ? id.lastIndexOf("-") : -1;
  if (i <= 0 || !/^\d+$/.test(id.slice(i + 1))) return null;
  const version = Number(id.slice(i + 1));
  return Number.isSafeInteger(version) ? { epoch: id.slice(0, i), version } : null;
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return undefined;
  }
}

/** `Retry-After` (seconds or an HTTP date) in milliseconds; 0 if none. */
function parseRetryAfter(value) {
  if (!value) return 0;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? 0 : Math.max(0, at - Date.now());
}
