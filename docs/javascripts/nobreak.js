// Inline code that is one name (`--app-protocol`, `ERR_PUBSUB_NOT_FOUND`, `max_body_size`) is
// not broken over two lines: the browser would break it at its hyphens, and CSS cannot forbid
// breaks at hyphens alone. So the names are marked here, and docs/stylesheets/extra.css keeps
// them whole. Only where a table then grows wider than its column, its longest names with
// underscores (metric names) may break after an underscore, longest first, until it fits.
// Code with spaces wraps at its spaces, as text does. scripts/screenshots checks the result.
function isName(code) {
  const text = code.textContent;
  return !code.closest("pre") && !code.children.length && !/\s/.test(text) && text.length <= 60;
}

function breakAfterUnderscores(code) {
  const parts = code.textContent.split("_");
  code.replaceChildren(...parts.flatMap((part, i) => (i ? ["_", document.createElement("wbr"), part] : [part])));
  code.classList.replace("md-code-name", "md-code-long-name");
}

function fitTables() {
  for (const box of document.querySelectorAll(".md-typeset__scrollwrap")) {
    const long = Array.from(box.querySelectorAll("code.md-code-name"))
      .filter((code) => code.textContent.includes("_"))
      .sort((a, b) => b.textContent.length - a.textContent.length);
    for (const code of long) {
      if (box.scrollWidth <= box.clientWidth) break;
      breakAfterUnderscores(code);
    }
  }
}

function markNames() {
  for (const code of document.querySelectorAll(".md-typeset code")) {
    if (isName(code)) code.classList.add("md-code-name");
  }
  fitTables();
}

if (typeof document$ !== "undefined") {
  document$.subscribe(markNames); // the theme's page-load signal (instant navigation too)
} else {
  document.addEventListener("DOMContentLoaded", markNames);
}
// Widths change when the web fonts arrive, and with the window.
document.fonts?.ready.then(fitTables);
window.addEventListener("resize", fitTables);
