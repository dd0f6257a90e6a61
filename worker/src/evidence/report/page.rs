//! The report page's fixed parts: its style sheet and its filter script.
//!
//! Both are inlined into the page so it needs nothing beside itself and makes no network request.
//! The sizes the style sets ([`super::FRAME_DISPLAY_WIDTH`], [`super::FRAME_STRIP_WIDTH`], the box
//! stroke) are the ones the screenshot test measures; change them together.

/// The style sheet.
pub(super) const STYLE: &str = "
body { margin: 0; padding: 16px; font: 14px/1.4 sans-serif; background: #ffffff; color: #222222; }
h1 { font-size: 20px; margin: 0 0 8px 0; }
[hidden] { display: none !important; }
.pass { color: #555555; font-size: 12px; margin-bottom: 8px; }
.toolbar { margin: 8px 0 12px 0; }
#filter { font-size: 14px; width: 320px; padding: 4px; }
#filter-count { margin-left: 8px; color: #555555; }
#failed { border: 1px solid #c00000; padding: 6px 10px; margin: 8px 0 12px 0; }
#failed h2 { font-size: 16px; margin: 0 0 6px 0; color: #a00000; }
#failed table { border-collapse: collapse; }
#failed td, #failed th { text-align: left; padding: 2px 12px 2px 0; vertical-align: top; }
.video { border-top: 2px solid #cccccc; padding: 12px 0; }
.video h2 { font-size: 16px; margin: 0 0 6px 0; word-break: break-all; }
.verdicts { border-collapse: collapse; margin: 6px 0; }
.verdicts td, .verdicts th { text-align: left; padding: 2px 12px 2px 0; }
.verdicts tr.flagged td { color: #a00000; font-weight: bold; }
.flag { color: #a00000; font-weight: bold; }
.timeline { position: relative; height: 22px; background: #eeeeee; margin: 8px 0 2px 0; width: 100%; }
.timeline .segment-edge { position: absolute; top: 0; width: 1px; height: 22px; background: #999999; }
.timeline .tick { position: absolute; top: 16px; width: 1px; height: 6px; background: #777777; }
.timeline .mark { position: absolute; top: 0; width: 3px; height: 14px; background: #0050c8; }
.timeline-scale { display: flex; justify-content: space-between; font-size: 11px; color: #555555; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; margin: 6px 0; }
.strip figure { width: 160px; }
.frames { display: flex; flex-wrap: wrap; gap: 16px; margin: 6px 0; }
figure { margin: 0; width: 480px; }
figure svg { display: block; }
figcaption { font-size: 12px; }
.box { fill: none; stroke: #ff00ff; stroke-width: 3; }
.segment { margin: 8px 0; }
.answer { white-space: pre-wrap; }
.meta { color: #555555; font-size: 12px; }
.empty { color: #555555; font-style: italic; }
";

/// The filter: every item with a `data-search` attribute (videos and failed videos) stays shown
/// while its lowercase text holds every word typed in `#filter`. Plain DOM, no network.
pub(super) const SCRIPT: &str = r#"
(function () {
  var input = document.getElementById("filter");
  var count = document.getElementById("filter-count");
  var items = Array.prototype.slice.call(document.querySelectorAll("[data-search]"));
  var videos = items.filter(function (item) { return item.classList.contains("video"); });
  var failedSection = document.getElementById("failed");
  function apply() {
    var words = input.value.toLowerCase().split(/\s+/).filter(function (word) { return word.length > 0; });
    var shown = 0;
    var failedShown = 0;
    items.forEach(function (item) {
      var text = item.getAttribute("data-search");
      var match = words.every(function (word) { return text.indexOf(word) >= 0; });
      item.hidden = !match;
      if (match && item.classList.contains("video")) { shown += 1; }
      if (match && item.classList.contains("failed-video")) { failedShown += 1; }
    });
    if (failedSection) { failedSection.hidden = failedShown === 0; }
    count.textContent = shown + " of " + videos.length + " videos shown";
  }
  input.addEventListener("input", apply);
  apply();
})();
"#;
