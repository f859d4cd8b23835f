/* The chat page: history on load, then live messages; who is here, and who joins and leaves.
   Every value is inserted as text. */
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var channel = params.get("channel") || "chat";
  var token = params.get("token") || undefined;  // for servers that require tokens
  var transport = ["ws", "sse", "longpoll"].indexOf(params.get("transport")) >= 0 ? params.get("transport") : "auto";
  var form = document.getElementById("chatform");
  var nick = document.getElementById("nick");
  var message = document.getElementById("message");
  var pane = document.getElementById("conversation");
  var statusEl = document.getElementById("status");
  var peopleEl = document.getElementById("people");
  var seen = new Set();
  var people = new Set();   // users on the channel (the server's presence list)
  var identified = false;   // the server knows who this is (a token, the site's session): the nickname is theirs

  document.getElementById("channel-name").textContent = "#" + channel;
  nick.value = localStorage.getItem("tidings-nick") || "";

  function line(cls, parts) {
    var div = document.createElement("div");
    div.className = cls;
    parts.forEach(function (part) {
      var span = document.createElement(part[0]);
      if (part[1]) span.className = part[1];
      span.textContent = part[2];
      div.appendChild(span);
    });
    var atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 40;
    pane.appendChild(div);
    if (atBottom) pane.scrollTop = pane.scrollHeight;
    return div;
  }

  function show(msg) {
    if (msg.id !== null) {  // live-only messages (a plain Redis PUBLISH) have no id
      if (seen.has(msg.id)) return;
      seen.add(msg.id);
    }
    var data = msg.data;
    var who = data && typeof data === "object" ? String(data.nick || "anonymous") : "anonymous";
    var text = data && typeof data === "object" ? String(data.message != null ? data.message : JSON.stringify(data)) : String(data);
    var when = new Date(msg.time).toLocaleTimeString();
    line("msg", [["time", "when", when], ["b", "nick", who], ["span", "text", text]]).dataset.id = msg.id || "";
  }

  function showPeople() {
    peopleEl.textContent = "";
    Array.from(people).sort().forEach(function (user, index) {
      if (index) peopleEl.appendChild(document.createTextNode(", "));
      var span = document.createElement("span");
      span.className = "person";
      span.textContent = user;
      peopleEl.appendChild(span);
    });
    // (Only names: anonymous subscribers come and go without events, so a count would go stale.)
    if (!people.size) peopleEl.textContent = "nobody named yet";
  }

  function presence(event) {
    if (event.event === "here") {
      people = new Set(event.users.map(function (u) { return u.user; }));
      if (event.you && event.you.verified && !identified) {
        identified = true;  // a name the server vouches for
        nick.value = event.you.user;
        nick.readOnly = true;
      }
    } else if (event.event === "join" && !people.has(event.user)) {
      people.add(event.user);
      line("notice", [["span", "", event.user + " joined"]]);
    } else if (event.event === "leave" && people.delete(event.user)) {
      line("notice", [["span", "", event.user + " left"]]);
    }
    showPeople();
  }

  // On a server without authentication, the page names itself with its nickname (the server
  // lists it as such); elsewhere the server knows who it is. Kept on the window so that the
  // page's state can be looked at (e.g. which transport "auto" chose).
  function subscribe(lastId) {
    var subscription = Tidings.subscribe("", channel, show, {
      transport: transport,
      token: token,
      lastId: lastId,
      user: nick.value.trim() || undefined,
      presence: true,
      onPresence: presence,
      onGap: function () { line("notice", [["span", "", "Some messages were missed while disconnected."]]); },
      onStatus: function (state, detail) {
        if (subscription && subscription !== window.tidingsSubscription) return;  // (replaced)
        statusEl.dataset.state = state;
        statusEl.textContent = state === "reconnecting" ? "reconnecting in " + Math.round(detail.in / 1000) + " s" : state;
      },
      onClose: function () { line("notice", [["span", "", "This channel was closed."]]); },
      onRefused: function (refusal) {
        statusEl.textContent = "not allowed";
        line("notice", [["span", "", "Not allowed to read this channel: " + refusal.error + ": " + refusal.detail]]);
      },
    });
    subscription.user = nick.value.trim();
    window.tidingsSubscription = subscription;
  }
  subscribe("oldest");

  // A new nickname: subscribed again under it, from where the page is (nothing missed or repeated).
  function renamed() {
    var current = window.tidingsSubscription;
    if (identified || current.user === nick.value.trim()) return;
    var cursor = current.cursor;
    current.close();
    subscribe(cursor || "oldest");
  }

  nick.addEventListener("change", function () {  // (a new name is listed at once, not at the next message)
    if (nick.value.trim()) {
      localStorage.setItem("tidings-nick", nick.value);
      renamed();
    }
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = message.value;
    if (!text.trim() || !nick.value.trim()) return;
    localStorage.setItem("tidings-nick", nick.value);
    renamed();
    // Emptied at once, so that a repeated Enter or a double tap on Send cannot send it twice;
    // it comes back if sending fails (unless a new message is being typed by then).
    message.value = "";
    message.focus();
    Tidings.publish("", channel, { nick: nick.value, message: text }, { token: token })
      .catch(function (err) {
        if (!message.value) message.value = text;
        line("notice", [["span", "", "Not sent: " + err.message]]);
      });
  });
})();
