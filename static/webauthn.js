/* Corp ID: the WebAuthn ceremony script for the sign-in and enrolment pages.
 *
 * No inline script (CSP): the page describes the ceremony with data-* attributes on
 * #webauthn: data-mode ("login" or "enrol"), data-options, data-verify (URLs), data-csrf,
 * data-handle (sign-in: the pending authorization); a sign-in page may carry its first
 * options in data-public-key, usable for data-fresh-for seconds after the page loaded (once:
 * a retry asks data-options for a new challenge). Messages live in the page, in its
 * language, as elements with data-message="..." (hidden until needed); after a failed attempt
 * the button takes the label of [data-label="try-again"].
 *
 * Browsers answer NotAllowedError both when the person cancels and when the ceremony's
 * timeout (the server's IDP_WEBAUTHN_TIMEOUT_MS) ends with no key used: the time it took tells
 * them apart, so "nothing answered in time" (often: no key plugged in) gets its own message.
 * Some browsers keep their own dialog open past the timeout (headless Chromium with no key
 * never answers): a little after it, the page aborts the request itself rather than hang.
 */
(function () {
  "use strict";

  function b64urlToBytes(value) {
    var text = value.replace(/-/g, "+").replace(/_/g, "/");
    while (text.length % 4) { text += "="; }
    var raw = atob(text);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
    return out.buffer;
  }

  function bytesToB64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var raw = "";
    for (var i = 0; i < bytes.length; i++) { raw += String.fromCharCode(bytes[i]); }
    return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function creationOptions(json) {
    if (window.PublicKeyCredential && PublicKeyCredential.parseCreationOptionsFromJSON) {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    var o = Object.assign({}, json);
    o.challenge = b64urlToBytes(json.challenge);
    o.user = Object.assign({}, json.user, { id: b64urlToBytes(json.user.id) });
    o.excludeCredentials = (json.excludeCredentials || []).map(function (c) {
      return Object.assign({}, c, { id: b64urlToBytes(c.id) });
    });
    return o;
  }

  function requestOptions(json) {
    if (window.PublicKeyCredential && PublicKeyCredential.parseRequestOptionsFromJSON) {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    var o = Object.assign({}, json);
    o.challenge = b64urlToBytes(json.challenge);
    o.allowCredentials = (json.allowCredentials || []).map(function (c) {
      return Object.assign({}, c, { id: b64urlToBytes(c.id) });
    });
    return o;
  }

  function credentialJSON(cred) {
    if (typeof cred.toJSON === "function") { return cred.toJSON(); }
    var r = cred.response;
    var out = {
      id: cred.id, rawId: bytesToB64url(cred.rawId), type: cred.type,
      authenticatorAttachment: cred.authenticatorAttachment || null,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
      response: { clientDataJSON: bytesToB64url(r.clientDataJSON) }
    };
    if (r.attestationObject) {
      out.response.attestationObject = bytesToB64url(r.attestationObject);
      out.response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      out.response.authenticatorData = bytesToB64url(r.authenticatorData);
      out.response.signature = bytesToB64url(r.signature);
      out.response.userHandle = r.userHandle ? bytesToB64url(r.userHandle) : null;
    }
    return out;
  }

  var root = document.getElementById("webauthn");
  if (!root) { return; }
  var status = document.getElementById("webauthn-status");
  var button = document.getElementById("webauthn-start");
  var form = document.getElementById("webauthn-form");
  var retryLabel = root.querySelector('[data-label="try-again"]');

  function say(kind, detail) {
    var template = root.querySelector('[data-message="' + kind + '"]') ||
      root.querySelector('[data-message="failed"]');
    status.textContent = template ? template.textContent : kind;
    if (detail) {
      var extra = document.createElement("span");
      extra.className = "detail";
      extra.textContent = " " + detail;
      status.appendChild(extra);
    }
    status.hidden = false;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": root.dataset.csrf },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var error = new Error(data.error_description || ("HTTP " + response.status));
          error.server = true;
          error.status = response.status;
          throw error;
        }
        return data;
      });
    });
  }

  function fields() {
    var body = {};
    if (root.dataset.handle) { body.h = root.dataset.handle; }
    if (form) {
      Array.prototype.forEach.call(form.querySelectorAll("input[name]"), function (input) {
        if (input.name !== "csrf_token") { body[input.name] = input.value; }
      });
    }
    return body;
  }

  function run(event) {
    if (event) { event.preventDefault(); }
    if (!window.PublicKeyCredential || !navigator.credentials) {
      say("unsupported");
      return;
    }
    var enrol = root.dataset.mode === "enrol";
    var body = fields();
    var started = 0;
    var waitMs = 0;
    var guard = 0;
    var controller = window.AbortController ? new AbortController() : null;
    button.disabled = true;
    say("waiting");
    var first = embedded;
    embedded = null;  // a challenge answers once: any retry asks for a new one
    var asked = first && Date.now() < freshUntil ? Promise.resolve(first)
                                                  : post(root.dataset.options, body);
    asked.then(function (options) {
      var publicKey = enrol ? creationOptions(options.publicKey) : requestOptions(options.publicKey);
      waitMs = Number(options.publicKey.timeout) || 0;
      started = Date.now();
      var request = { publicKey: publicKey };
      if (controller && waitMs) {
        request.signal = controller.signal;
        // Chromium stretches short timeouts to 10 s; give the browser its chance first.
        guard = window.setTimeout(function () { controller.abort(); },
                                  Math.max(waitMs, 10000) + 5000);
      }
      return enrol ? navigator.credentials.create(request) : navigator.credentials.get(request);
    }).then(function (credential) {
      window.clearTimeout(guard);
      if (!credential) { throw Object.assign(new Error("no credential"), { name: "NotAllowedError" }); }
      body.credential = credentialJSON(credential);
      say("checking");
      return post(root.dataset.verify, body);
    }).then(function (result) {
      say("done");
      window.location.assign(result.next);
    }).catch(function (error) {
      window.clearTimeout(guard);
      button.disabled = false;
      if (retryLabel) { button.textContent = retryLabel.textContent; }
      if (error.server) {
        say(error.status === 429 ? "slow-down" : "refused", error.message);
      } else if (error.name === "NotAllowedError" || error.name === "AbortError") {
        // Browsers may stretch a short timeout (Chromium waits at least 10 s): "at least
        // most of the timeout" is what ran out of time.
        var timedOut = started && waitMs && Date.now() - started >= 0.9 * waitMs;
        say(timedOut ? "timeout" : "cancelled");
      } else if (error.name === "InvalidStateError") {
        say("already-registered");
      } else if (error.name === "SecurityError") {
        say("wrong-site");
      } else {
        say("failed", error.message);
      }
    });
  }

  var embedded = null;
  var freshUntil = 0;
  if (root.dataset.publicKey) {
    try {
      embedded = JSON.parse(root.dataset.publicKey);
      freshUntil = Date.now() + 1000 * (Number(root.dataset.freshFor) || 0);
    } catch (ignored) {
      embedded = null;
    }
  }

  (form || button).addEventListener(form ? "submit" : "click", run);
})();
