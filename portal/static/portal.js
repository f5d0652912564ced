// The portal's behaviour on top of htmx: focus after an update, one live region, unsaved edits.
(function () {
  "use strict";

  // One live region, never replaced: screen readers announce changes to a region they already know.
  function announce(messages) {
    const region = document.getElementById("announcer");
    if (!region || !messages.length) return;
    region.textContent = "";
    // A short pause so the same sentence said twice in a row is still read out the second time.
    setTimeout(function () { region.textContent = messages.join(" "); }, 60);
  }

  function newMessages() {
    const seen = new Set();
    const messages = [];
    document.querySelectorAll("[data-announce]:not([data-announced])").forEach(function (el) {
      el.setAttribute("data-announced", "");
      const text = el.textContent.replace(/\s+/g, " ").trim();
      if (text && !seen.has(text)) { seen.add(text); messages.push(text); }
    });
    return messages;
  }

  // What had focus when each request started (a button disabled while its request runs drops focus), kept per
  // request: a poll that starts meanwhile must not make the answer to a click forget where the user was.
  const focusedBefore = new WeakMap();

  function survivor(before) {
    if (!before) return null;
    const same = before.id ? document.getElementById(before.id) : null;
    const el = same || (before.el.isConnected ? before.el : null);
    return el && !el.disabled && !el.closest("[hidden], [inert]") ? el : null;
  }

  // After a swap the focused element may be gone: focus goes back to it when it survived (the same element or
  // id), else to what changed. The first invalid field comes first, then a connection test's heading.
  function restoreFocus(before) {
    const marked = document.querySelectorAll("[data-focus]");
    const active = document.activeElement;
    const lost = !active || active === document.body || !active.isConnected;
    if (lost) {
      const target = document.querySelector("[data-focus][aria-invalid=true]") || survivor(before)
        || document.querySelector("#test-status [data-focus]") || marked[0];
      if (target) target.focus({preventScroll: false});
    }
    marked.forEach(function (el) { el.removeAttribute("data-focus"); });
  }

  // Leaving, or submitting a form without htmx, with unsaved edits elsewhere asks first.
  let submitting = null;

  function markDirty(section, dirty) {
    if (!section) return;
    section.toggleAttribute("data-dirty", dirty);
    const note = section.querySelector("[data-unsaved]");
    if (note) note.hidden = !dirty;
  }

  function dirtySections() {
    return document.querySelectorAll(".settings-section[data-dirty]");
  }

  document.addEventListener("DOMContentLoaded", function () {
    // Messages and focus marks in a freshly loaded page are read with the page itself.
    document.querySelectorAll("[data-announce]").forEach(function (el) { el.setAttribute("data-announced", ""); });
    document.querySelectorAll("[data-focus]").forEach(function (el) { el.removeAttribute("data-focus"); });
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    const active = document.activeElement;
    if (event.detail.xhr && active && active !== document.body) {
      focusedBefore.set(event.detail.xhr, {el: active, id: active.id});
    }
  });

  // A field validated as it is typed and again when it is left asks once per value (data-validate-once):
  // a second answer would replace the feedback, and a button in it, under the keyboard user's focus.
  document.addEventListener("htmx:confirm", function (event) {
    const elt = event.detail.elt;
    if (!elt.matches || !elt.matches("[data-validate-once]")) return;
    if (elt.getAttribute("data-validated") === elt.value) {
      event.preventDefault();
      return;
    }
    elt.setAttribute("data-validated", elt.value);
  });

  // A check that ends without an answer shown (cut short by the next check or by Append /web, failed, timed out, or
  // answered with an error, which is not swapped in) leaves its value to be asked again; the value a newer check
  // has marked stays marked. Only an answer htmx counts as successful settles a value.
  const validating = new WeakMap();
  document.addEventListener("htmx:beforeRequest", function (event) {
    const elt = event.detail.elt;
    if (event.detail.xhr && elt.matches && elt.matches("[data-validate-once]")) validating.set(event.detail.xhr, elt.value);
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    const elt = event.detail.elt;
    const asked = event.detail.xhr ? validating.get(event.detail.xhr) : undefined;
    if (asked !== undefined && event.detail.successful !== true && elt.getAttribute("data-validated") === asked) {
      elt.removeAttribute("data-validated");
    }
  });

  // Append /web answered after the user typed on in the field (within the pause before the field's own check, which
  // would have cut it short): the answer is for an older value, so neither the field nor its feedback is replaced.
  const appendAsked = new WeakMap();
  document.addEventListener("htmx:beforeRequest", function (event) {
    const field = document.getElementById("connection-org_url");
    if (event.detail.xhr && field && event.detail.elt.matches && event.detail.elt.matches("[data-append-web]")) {
      appendAsked.set(event.detail.xhr, field.value);
    }
  });
  document.addEventListener("htmx:beforeSwap", function (event) {
    const asked = event.detail.xhr ? appendAsked.get(event.detail.xhr) : undefined;
    const field = document.getElementById("connection-org_url");
    if (asked !== undefined && field && field.value !== asked) event.detail.shouldSwap = false;
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    // A section answered 422 still holds edits that are not saved.
    const xhr = event.detail.xhr;
    const target = event.detail.target;
    if (xhr && xhr.status === 422 && target && target.id) markDirty(document.getElementById(target.id), true);
    restoreFocus(xhr ? focusedBefore.get(xhr) : null);
    announce(newMessages());
  });
  document.addEventListener("htmx:afterRequest", function () { submitting = null; });

  document.addEventListener("input", function (event) {
    if (event.target.closest("form")) markDirty(event.target.closest(".settings-section"), true);
  });
  document.addEventListener("change", function (event) {
    if (event.target.closest("form")) markDirty(event.target.closest(".settings-section"), true);
    // A contact list's switch names what the chosen CRM list holds (CRM Leads or CRM Contacts).
    const list = event.target.closest("select[data-names-members]");
    if (list) {
      const label = document.querySelector('label[for="' + list.getAttribute("data-names-members") + '"]');
      const members = list.selectedOptions[0] && list.selectedOptions[0].getAttribute("data-members");
      if (label && members) label.lastChild.textContent = " Keep list in sync with CRM " + members;
    }
  });

  // Saving one section refreshes others out of band; a section with unsaved edits keeps them.
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    const target = event.detail.target;
    if (target && target.matches && target.matches(".settings-section[data-dirty]")) event.detail.shouldSwap = false;
  });

  document.addEventListener("submit", function (event) { submitting = event.target.closest(".settings-section"); });
  window.addEventListener("beforeunload", function (event) {
    const others = Array.from(dirtySections()).filter(function (s) { return s !== submitting; });
    submitting = null;
    if (others.length) {
      event.preventDefault();
      event.returnValue = "";
    }
  });
})();
