// Waits on the page that tolerate an element that is not there yet.
//
// A predicate given to page.waitForFunction that throws (such as
// document.querySelector(sel).textContent before a page has rendered sel)
// ends the wait at once with that error instead of waiting on, so every wait
// on an element's text goes through waitText.

// Waits until the text of the first element matching sel matches re; an
// element that is missing counts as empty text.
export function waitText(page, sel, re, opts = {}) {
  return page.waitForFunction(
    ([s, source, flags]) => new RegExp(source, flags).test(document.querySelector(s)?.textContent ?? ""),
    [sel, re.source, re.flags], opts);
}
