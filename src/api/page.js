// The Webhooks page: calls the JSON API with the token kept in sessionStorage (never a cookie).
// Everything the API returns is put into the page with textContent, never parsed as HTML.
"use strict";

(function () {
  const MAX_WEBHOOKS = 10;
  const store = window.sessionStorage;
  const $ = (id) => document.getElementById(id);

  let token = store.getItem("hookrelay.token");
  let account = store.getItem("hookrelay.account");
  let webhookCount = 0;

  // ---- messages -------------------------------------------------------------------------

  function flash(text, ok) {
    $("flash-text").textContent = text;
    $("flash").classList.toggle("ok", Boolean(ok));
    $("flash").hidden = false;
    $("flash").scrollIntoView({ block: "nearest" });
  }

  function clearFlash() {
    $("flash").hidden = true;
  }

  // ---- API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + token };
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "network", "Could not reach the server. Check your connection and try again.");
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null;
    }
    if (!response.ok) {
      const err = data && data.error;
      const message = err && err.message ? err.message : "The server answered " + response.status + ".";
      if (response.status === 401) {
        signOut();
        throw new ApiError(401, "unauthorized", "Your token is not valid (any more). Sign in again.");
      }
      throw new ApiError(response.status, err ? err.code : "error", sentence(message));
    }
    return data;
  }

  function sentence(text) {
    const t = String(text).trim();
    if (!t) return t;
    const first = t.charAt(0).toUpperCase() + t.slice(1);
    return /[.!?]$/.test(first) ? first : first + ".";
  }

  const accountPath = () => "/v1/accounts/" + encodeURIComponent(account);
  const webhookPath = (id) => accountPath() + "/webhooks/" + encodeURIComponent(id);

  // ---- sign in / out --------------------------------------------------------------------

  async function signIn(event) {
    event.preventDefault();
    clearFlash();
    const given = $("token").value.trim();
    if (!given) {
      flash("Paste your account token to sign in.");
      return;
    }
    token = given;
    $("signin-submit").disabled = true;
    try {
      const me = await api("GET", "/v1/whoami");
      if (me.admin) {
        const chosen = $("account").value.trim();
        if (!chosen) {
          $("account-row").hidden = false;
          $("account").focus();
          flash("This is the admin token: enter the account ID to manage.");
          token = null;
          return;
        }
        account = chosen;
      } else {
        account = me.account_id;
      }
      store.setItem("hookrelay.token", token);
      store.setItem("hookrelay.account", account);
      $("token").value = "";
      await showApp();
    } catch (e) {
      token = null;
      flash(e.message);
    } finally {
      $("signin-submit").disabled = false;
    }
  }

  function signOut() {
    store.removeItem("hookrelay.token");
    store.removeItem("hookrelay.account");
    token = null;
    account = null;
    $("app").hidden = true;
    $("signin").hidden = false;
    $("who").hidden = true;
    $("sign-out").hidden = true;
    $("secret-panel").hidden = true;
    $("webhooks").replaceChildren();
  }

  async function showApp() {
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").textContent = "Account " + account;
    $("who").hidden = false;
    $("sign-out").hidden = false;
    await loadWebhooks();
  }

  // ---- the list -------------------------------------------------------------------------

  async function loadWebhooks() {
    let data;
    try {
      data = await api("GET", accountPath() + "/webhooks");
    } catch (e) {
      flash(e.message);
      return;
    }
    const list = $("webhooks");
    list.replaceChildren(...data.webhooks.map(renderWebhook));
    webhookCount = data.webhooks.length;
    $("empty").hidden = webhookCount > 0;
    $("count").textContent =
      webhookCount + " of " + MAX_WEBHOOKS + " webhooks" + (webhookCount >= MAX_WEBHOOKS ? " (the limit)" : "");
    await Promise.all(data.webhooks.map((w) => loadLastResult(w.id)));
  }

  function renderWebhook(w) {
    const item = $("webhook-template").content.firstElementChild.cloneNode(true);
    item.dataset.id = w.id;
    item.dataset.enabled = String(w.enabled);
    item.querySelector(".url").textContent = w.url;
    const badge = item.querySelector(".badge");
    badge.textContent = w.enabled ? "Enabled" : "Disabled" + (w.disabled_reason ? " (" + w.disabled_reason + ")" : "");
    badge.classList.add(w.enabled ? "on" : "off");
    const description = item.querySelector(".description");
    description.textContent = w.description;
    description.hidden = !w.description;
    const limit = item.querySelector(".rate-limit");
    limit.textContent = w.rate_limit ? "At most " + w.rate_limit + " deliveries per second" : "";
    limit.hidden = !w.rate_limit;
    const chips = item.querySelector(".chips");
    const labels = w.events.length === 1 && w.events[0] === "*" ? ["All events"] : w.events;
    for (const label of labels) {
      const chip = document.createElement("li");
      chip.textContent = label;
      chips.appendChild(chip);
    }
    item.querySelector(".last").textContent = "Last result: loading…";
    item.querySelector(".toggle").textContent = w.enabled ? "Disable" : "Enable";

    item.querySelector(".send").addEventListener("click", () => sendExample(item));
    item.querySelector(".toggle").addEventListener("click", () => toggle(item));
    item.querySelector(".show-attempts").addEventListener("click", () => toggleAttempts(item));
    item.querySelector(".delete").addEventListener("click", () => {
      item.querySelector(".confirm").hidden = false;
      item.querySelector(".confirm-delete").focus();
    });
    item.querySelector(".confirm-cancel").addEventListener("click", () => {
      item.querySelector(".confirm").hidden = true;
    });
    item.querySelector(".confirm-delete").addEventListener("click", () => remove(item));
    return item;
  }

  function itemFor(id) {
    return Array.from(document.querySelectorAll("#webhooks > li")).find((li) => li.dataset.id === id);
  }

  async function loadLastResult(id) {
    const item = itemFor(id);
    if (!item) return;
    const last = item.querySelector(".last");
    try {
      const data = await api("GET", webhookPath(id) + "/attempts?limit=1");
      last.replaceChildren();
      if (data.attempts.length === 0) {
        last.textContent = "Last result: no deliveries yet";
        return;
      }
      const a = data.attempts[0];
      last.append("Last result: ", outcome(a), " · " + a.event_type + " · " + ago(a.at));
      if (data.failing) {
        const f = data.failing;
        const line = document.createElement("div");
        line.className = "status-bad failing";
        line.textContent = "Failing since " + (f.since ? ago(f.since) : "recently") + " · " +
          f.consecutive_failures + " failed attempts in a row" +
          (f.last_error ? " · last: " + f.last_error : "");
        last.append(line);
      }
    } catch (e) {
      last.textContent = "Last result: unavailable (" + e.message + ")";
    }
  }

  function outcome(a) {
    const span = document.createElement("span");
    const ok = a.status !== null && a.status !== undefined && a.status >= 200 && a.status < 300;
    span.className = ok ? "status-ok" : "status-bad";
    if (a.status !== null && a.status !== undefined) {
      span.textContent = "HTTP " + a.status + " in " + a.duration_ms + " ms";
    } else {
      span.textContent = "failed: " + (a.error || "no response");
    }
    return span;
  }

  function ago(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) return seconds <= 1 ? "just now" : seconds + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.round(seconds / 3600) + " h ago";
    return new Date(iso).toLocaleString();
  }

  // ---- actions on one webhook -----------------------------------------------------------

  async function sendExample(item) {
    clearFlash();
    const button = item.querySelector(".send");
    const result = item.querySelector(".result");
    button.disabled = true;
    button.textContent = "Sending…";
    try {
      const r = await api("POST", webhookPath(item.dataset.id) + "/test");
      result.replaceChildren();
      const line = document.createElement("div");
      line.append("Example " + r.event_type + " sent (" + r.event_id + "): ", outcome(r));
      result.appendChild(line);
      if (r.response_excerpt) {
        const pre = document.createElement("pre");
        pre.textContent = r.response_excerpt;
        result.appendChild(pre);
      }
      result.hidden = false;
      await Promise.all([loadLastResult(item.dataset.id), openAttempts(item)]);
    } catch (e) {
      flash(e.message);
    } finally {
      button.disabled = false;
      button.textContent = "Send example";
    }
  }

  async function toggle(item) {
    clearFlash();
    const enable = item.dataset.enabled !== "true";
    try {
      await api("PATCH", webhookPath(item.dataset.id), { enabled: enable });
      flash(enable ? "Webhook enabled." : "Webhook disabled: no events are sent to it until you enable it.", true);
      await loadWebhooks();
    } catch (e) {
      flash(e.message);
    }
  }

  async function remove(item) {
    clearFlash();
    try {
      await api("DELETE", webhookPath(item.dataset.id));
      flash("Webhook deleted.", true);
      await loadWebhooks();
    } catch (e) {
      flash(e.message);
    }
  }

  async function toggleAttempts(item) {
    const panel = item.querySelector(".attempts");
    if (!panel.hidden) {
      panel.hidden = true;
      item.querySelector(".show-attempts").setAttribute("aria-expanded", "false");
      return;
    }
    await openAttempts(item);
  }

  // `quiet`: a background refresh, whose failure (e.g. the webhook was deleted meanwhile) is not
  // worth a message.
  async function openAttempts(item, { quiet = false } = {}) {
    const panel = item.querySelector(".attempts");
    try {
      const data = await api("GET", webhookPath(item.dataset.id) + "/attempts?limit=20");
      const list = item.querySelector(".attempt-list");
      list.replaceChildren(...data.attempts.map((a) => renderAttempt(item, a)));
      item.querySelector(".attempts-empty").hidden = data.attempts.length > 0;
      panel.hidden = false;
      item.querySelector(".show-attempts").setAttribute("aria-expanded", "true");
    } catch (e) {
      if (!quiet) flash(e.message);
    }
  }

  function renderAttempt(item, a) {
    const row = document.createElement("li");
    row.className = "attempt";
    const when = document.createElement("span");
    when.className = "when";
    when.textContent = ago(a.at);
    when.title = a.at;
    const what = document.createElement("span");
    what.className = "what";
    what.append(a.event_type + " · attempt " + a.attempt);
    const id = document.createElement("code");
    id.textContent = a.event_id;
    what.appendChild(id);
    const result = document.createElement("span");
    result.className = "outcome";
    result.appendChild(outcome(a));
    row.append(when, what);
    const resend = document.createElement("button");
    resend.type = "button";
    resend.className = "resend";
    resend.textContent = "Resend";
    if (a.resendable) {
      resend.addEventListener("click", () => resendEvent(item, a.event_id, resend));
    } else {
      resend.disabled = true;
      resend.title = "This event was larger than 16 KiB and was not kept for resending.";
    }
    row.append(resend, result);
    if (a.response_excerpt) {
      const pre = document.createElement("pre");
      pre.textContent = a.response_excerpt;
      row.appendChild(pre);
    }
    return row;
  }

  async function resendEvent(item, eventId, button) {
    clearFlash();
    button.disabled = true;
    try {
      await api("POST", webhookPath(item.dataset.id) + "/events/" + encodeURIComponent(eventId) + "/resend");
      flash("Event " + eventId + " queued for redelivery; the attempt shows here in a moment.", true);
      const id = item.dataset.id;
      setTimeout(() => {
        // The list may have been re-rendered (or the webhook deleted) meanwhile.
        const current = itemFor(id);
        if (!current) return;
        loadLastResult(id);
        if (!current.querySelector(".attempts").hidden) openAttempts(current, { quiet: true });
      }, 1500);
    } catch (e) {
      flash(e.message);
    } finally {
      button.disabled = false;
    }
  }

  // ---- adding ---------------------------------------------------------------------------

  function openAddForm() {
    clearFlash();
    if (webhookCount >= MAX_WEBHOOKS) {
      flash("This account already has " + MAX_WEBHOOKS + " webhooks, the most an account may have. Delete one to add another.");
      return;
    }
    $("secret-panel").hidden = true;
    $("add-form").hidden = false;
    $("url").focus();
  }

  function closeAddForm() {
    clearFlash();
    $("add-form").reset();
    syncAllEvents();
    $("add-form").hidden = true;
  }

  function syncAllEvents() {
    const all = $("all-events").checked;
    for (const box of document.querySelectorAll("#event-types input[type=checkbox]")) {
      box.disabled = all;
    }
    $("event-types").classList.toggle("disabled", all);
  }

  async function addWebhook(event) {
    event.preventDefault();
    clearFlash();
    const url = $("url").value.trim();
    const events = $("all-events").checked
      ? ["*"]
      : Array.from(document.querySelectorAll("#event-types input:checked")).map((b) => b.value);
    if (!url) {
      flash("Enter the URL of your endpoint.");
      $("url").focus();
      return;
    }
    if (events.length === 0) {
      flash("Choose at least one event type, or All events.");
      return;
    }
    const rateLimit = $("rate-limit").value.trim();
    if (rateLimit && !/^[0-9]+$/.test(rateLimit)) {
      flash("The rate limit is a whole number of deliveries per second, 1 to 10,000, or empty for none.");
      $("rate-limit").focus();
      return;
    }
    const body = { url, events, format: $("format").value };
    const description = $("description").value.trim();
    if (description) body.description = description;
    if (rateLimit) body.rate_limit = Number(rateLimit);
    $("add-submit").disabled = true;
    try {
      const created = await api("POST", accountPath() + "/webhooks", body);
      closeAddForm();
      $("secret-value").textContent = created.secret;
      $("secret-copy").textContent = "Copy";
      $("secret-panel").hidden = false;
      await loadWebhooks();
      $("secret-panel").scrollIntoView({ block: "nearest" });
    } catch (e) {
      flash(e.message);
    } finally {
      $("add-submit").disabled = false;
    }
  }

  async function copySecret() {
    const text = $("secret-value").textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      // No clipboard API (e.g. a plain-http page): select the text and use the older command.
      const range = document.createRange();
      range.selectNodeContents($("secret-value"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      if (!document.execCommand("copy")) {
        flash("Could not copy: the secret is selected, copy it with your keyboard.");
        return;
      }
    }
    $("secret-copy").textContent = "Copied";
  }

  // ---- wiring ---------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => {
      clearFlash();
      signOut();
    });
    $("flash-close").addEventListener("click", clearFlash);
    $("add-open").addEventListener("click", openAddForm);
    $("add-cancel").addEventListener("click", closeAddForm);
    $("add-form").addEventListener("submit", addWebhook);
    $("all-events").addEventListener("change", syncAllEvents);
    $("secret-copy").addEventListener("click", copySecret);
    $("secret-done").addEventListener("click", () => {
      $("secret-panel").hidden = true;
      $("secret-value").textContent = "";
    });
    if (token && account) {
      showApp();
    }
  });
})();
