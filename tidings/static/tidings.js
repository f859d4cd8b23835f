/* Tidings browser client: WebSocket, Server-Sent Events or long-poll, with cursor resume.
 *
 *   const sub = Tidings.subscribe("", "chat", (msg) => ..., {transport: "auto", onGap, onStatus});
 *
 * `transport`: "ws", "sse", "longpoll", or "auto" (the default: WebSocket, falling back to
 * SSE and then long-poll when a transport cannot even connect — e.g. a proxy that does not
 * pass WebSocket upgrades — and keeping the first one that worked).
 *   sub.close();
 *   await Tidings.publish("", "chat", {nick: "ann", message: "hi"});
 *
 * `url` is the server's base URL ("" for the page's own origin). Every message is
 * {id, channel, data, time}. The client keeps its cursor and, after an error, reconnects
 * with growing back-off (1 s, 2 s, ... 30 s), resuming exactly where it left off. A refusal
 * (401 or 403: no token, or not allowed) is not retried: the status becomes "refused" and
 * `onRefused({error, detail})` is called. (A browser does not show why an EventSource or a
 * WebSocket did not open, so when one does not, one long-poll with timeout=0 asks.)
 *
 * Presence: with `presence: true`, `onPresence(event)` hears who is on each channel: after
 * every (re)connect {event: "here", channel, users: [{user, info, clients, transports, since}],
 * anonymous, total_users, you} (the whole list, from GET /channels/{channel}/presence), then
 * {event: "join" | "leave", channel, user, info} as users come and go. Join and leave are live
 * notices: what happens while disconnected comes with the next "here" (long-poll names itself
 * with ?client=, so what happens between two polls comes with the next poll; it also reads the
 * list again every 25-35 s). `user` names the client on a server without
 * authentication (there the name is the client's word; with tokens or --auth-url it is theirs).
 *   const who = await Tidings.presence("", "chat");   // the same list, once
 */
(function (global) {
  "use strict";

  var MAX_BACKOFF_MS = 30000;

  // A token (servers started with --auth-secret) rides as ?token= on every URL: EventSource and
  // WebSocket cannot set an Authorization header.
  function withToken(address, token) {
    if (!token) return address;
    return address + (address.indexOf("?") >= 0 ? "&" : "?") + "token=" + encodeURIComponent(token);
  }

  // Query parameters as "a=1&b=2" (those that are set).
  function queryOf(fields) {
    return Object.keys(fields).filter(function (key) { return fields[key] != null && fields[key] !== ""; })
      .map(function (key) { return key + "=" + encodeURIComponent(fields[key]); }).join("&");
  }

  function withQuery(address, fields) {
    var query = queryOf(fields);
    return query ? address + (address.indexOf("?") >= 0 ? "&" : "?") + query : address;
  }

  function presence(url, channel, options) {
    options = options || {};
    var address = withQuery(url + "/channels/" + encodeURIComponent(channel) + "/presence", { user: options.user });
    return fetch(withToken(address, options.token), { cache: "no-store" }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw new Error(body.error + ": " + body.detail);
        return body;
      });
    });
  }

  function channelList(channels) {
    return Array.isArray(channels) ? channels.join(",") : String(channels);
  }

  function subscribe(url, channels, onMessage, options) {
    options = options || {};
    var modes = ["ws", "sse", "longpoll"];
    var transport = options.transport || "auto";
    var auto = transport === "auto";
    var mode = auto ? 0 : Math.max(0, modes.indexOf(transport));
    var proven = false;   // the current mode has connected once: no more falling back
    var path = channelList(channels);
    var cursor = options.lastId || null;
    var backoff = 1000;
    var closed = false;
    var retryTimer = null;
    var abort = null;     // AbortController of the poll in flight
    var source = null;    // EventSource when streaming
    var socket = null;    // WebSocket
    var status = null;
    var fresh = true;     // first poll after (re)connecting answers at once: history + "connected"
    var listing = null;   // the long-poll's timer to read the list again (see poll)
    // What every subscribe URL carries besides the cursor: who the client is, whether it listens to presence.
    var extra = { user: options.user, presence: options.presence ? 1 : null };
    // A long-poll listener's name: what it would have heard between two polls comes with the next.
    var client = options.presence ? Math.random().toString(36).slice(2) + Date.now().toString(36) : null;

    function setStatus(next, detail) {
      if (next === status) return;
      status = next;
      if (options.onStatus) options.onStatus(next, detail);
    }

    function retryLater(reason) {
      if (closed) return;
      setStatus("reconnecting", { in: backoff, reason: reason });
      retryTimer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }

    function gap(channelsMissed) {
      if (options.onGap) options.onGap(channelsMissed);
    }

    function refused(response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        var detail = { error: body.error || "HTTP " + response.status, detail: body.detail || "" };
        closed = true;
        setStatus("refused", detail);
        if (options.onRefused) options.onRefused(detail);
      });
    }

    function presenceEvent(event) {
      if (options.onPresence) options.onPresence(event);
    }

    // The whole list, after every (re)connect (join/leave are live: missed while away).
    function listPresence() {
      if (!options.presence || closed) return;
      (Array.isArray(channels) ? channels : String(channels).split(",")).forEach(function (name) {
        presence(url, name, { token: options.token, user: options.user }).then(function (body) {
          if (!closed) presenceEvent(Object.assign({ event: "here" }, body));
        }).catch(function () { /* the subscription reports its own troubles */ });
      });
    }

    function connected() {
      proven = true;
      backoff = 1000;
      if (status !== "connected") listPresence();
      setStatus("connected");
    }

    function ended(detail) {
      closed = true;
      if (listing) clearInterval(listing);
      setStatus("closed", detail);
      if (options.onClose) options.onClose(detail);
    }

    function poll() {
      var query = "timeout=" + (fresh ? 0 : options.timeout || 30);
      if (cursor) query += "&last_id=" + encodeURIComponent(cursor);
      abort = new AbortController();
      // A backstop, every 25-35 s (spread): behind several server processes a poll may land on
      // another than the one that kept this client's events, and at most 64 are kept.
      if (options.presence && !listing) listing = setInterval(listPresence, 25000 + Math.random() * 10000);
      var address = withQuery(url + "/sub/" + path + "?" + query, Object.assign({ client: client }, extra));
      fetch(withToken(address, options.token), { signal: abort.signal, cache: "no-store" })
        .then(function (response) {
          if (response.status === 410) {
            return response.json().then(function (body) { ended({ channel: body.channel }); });
          }
          if (response.status === 401 || response.status === 403) return refused(response);
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json().then(function (body) {
            connected();
            fresh = false;
            if (body.gap) gap(null);
            (body.events || []).forEach(presenceEvent);
            body.messages.forEach(function (m) { onMessage(m); });
            cursor = body.last_id;
            if (!closed) poll();
          });
        })
        .catch(function (err) {
          if (!closed) retryLater(String(err));
        });
    }

    // A stream or socket that did not open: refused (asked with one quick long-poll), or
    // before a transport has ever connected, "auto" moves on to the next one at once.
    function failed(reason) {
      fetch(withToken(url + "/sub/" + path + "?timeout=0", options.token), { cache: "no-store" })
        .then(function (response) {
          if (response.status === 401 || response.status === 403) return refused(response);
          fallBack(reason);
        })
        .catch(function () { fallBack(reason); });
    }

    function fallBack(reason) {
      if (closed) return;
      if (auto && !proven && mode < modes.length - 1) {
        mode += 1;
        connect();
      } else {
        retryLater(reason);
      }
    }

    function websocket() {
      var base = (url || location.origin).replace(/^http/, "ws");
      var query = cursor ? "?last_id=" + encodeURIComponent(cursor) : "";
      var opened = false;
      socket = new WebSocket(withToken(withQuery(base + "/ws/" + path + query, extra), options.token));
      socket.onopen = function () { opened = true; connected(); };
      socket.onmessage = function (event) {
        var frame = JSON.parse(event.data);
        if (frame.type === "message") {
          cursor = frame.last_id;
          onMessage(frame.message);
        } else if (frame.type === "gap") {
          gap(frame.channels);
        } else if (frame.type === "join" || frame.type === "leave") {
          presenceEvent({ event: frame.type, channel: frame.channel, user: frame.user, info: frame.info });
        } else if (frame.type === "closed") {
          socket.onclose = null;
          socket.close();
          ended(frame);
        }
      };
      socket.onclose = function () {
        socket = null;
        if (closed) return;
        if (opened) retryLater("socket closed"); else failed("socket did not open");
      };
    }

    function stream() {
      var query = cursor ? "?last_event_id=" + encodeURIComponent(cursor) : "";
      var opened = false;
      source = new EventSource(withToken(withQuery(url + "/sse/" + path + query, extra), options.token));
      source.onopen = function () { opened = true; connected(); };
      source.onmessage = function (event) {
        cursor = event.lastEventId || cursor;
        onMessage(JSON.parse(event.data));
      };
      source.addEventListener("gap", function (event) { gap(JSON.parse(event.data).channels); });
      ["join", "leave"].forEach(function (name) {
        source.addEventListener(name, function (event) {
          presenceEvent(Object.assign({ event: name }, JSON.parse(event.data)));
        });
      });
      source.addEventListener("closed", function (event) {
        source.close();
        ended(JSON.parse(event.data));
      });
      source.onerror = function () {
        // Take reconnection over from the browser: our back-off, our cursor.
        source.close();
        if (opened) retryLater("stream interrupted"); else failed("stream did not open");
      };
    }

    function connect() {
      retryTimer = null;
      fresh = true;
      if (closed) return;
      setStatus("connecting", { transport: modes[mode] });
      if (modes[mode] === "ws") websocket();
      else if (modes[mode] === "sse") stream();
      else poll();
    }

    connect();
    return {
      close: function () {
        closed = true;
        if (retryTimer) clearTimeout(retryTimer);
        if (listing) clearInterval(listing);
        if (abort) abort.abort();
        if (source) source.close();
        if (socket) { socket.onclose = null; socket.close(); }
        setStatus("closed");
      },
      get cursor() { return cursor; },
      get transport() { return modes[mode]; },
    };
  }

  function publish(url, channel, data, options) {
    var headers = { "Content-Type": "application/json" };
    if (options && options.token) headers.Authorization = "Bearer " + options.token;
    return fetch(url + "/pub/" + encodeURIComponent(channel), {
      method: "POST",
      headers: headers,
      body: JSON.stringify(data),
    }).then(function (response) {
      return response.json().then(function (body) {
        if (!response.ok) throw new Error(body.error + ": " + body.detail);
        return body;
      });
    });
  }

  global.Tidings = { subscribe: subscribe, publish: publish, presence: presence };
})(typeof window !== "undefined" ? window : globalThis);
