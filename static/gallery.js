// The home page's grid of job cards (templates/fragments/_job_card.html), and the job page's poster. Everything is
// delegated from the document, so cards and panels the pages' streams push in later behave the same. A file of its
// own: the CSP forbids inline script and handlers.
//  - A finished clip plays in its card, muted and looping: while the mouse is over its picture, or after a tap
//    on it (a second tap stops it). The card's media holds the video's URL in data-video.
//  - A click or tap elsewhere on a card (not on a link, button or form) opens the job's page.
//  - A poster frame that fails to load (none was made, or it is gone) is hidden, so the box's placeholder shows.
(function () {
  "use strict";
  var lastPointer = "mouse";

  function media(target) {
    return target instanceof Element ? target.closest(".card-media[data-video]") : null;
  }

  function play(box) {
    if (box.querySelector("video")) return;
    var video = document.createElement("video");
    video.muted = true; // a muted video may start without a gesture; set as a property, which autoplay checks
    video.loop = true;
    video.playsInline = true;
    video.preload = "auto";
    video.className = "card-video";
    video.src = box.dataset.video;
    box.appendChild(video);
    box.classList.add("playing");
    var started = video.play();
    if (started && started.catch) started.catch(function () { stop(box); });
  }

  function stop(box) {
    var video = box.querySelector("video");
    if (video) {
      video.pause();
      video.removeAttribute("src");
      video.load(); // lets the browser drop the connection and the decoded frames
      video.remove();
    }
    box.classList.remove("playing");
  }

  document.addEventListener("pointerdown", function (event) { lastPointer = event.pointerType; }, true);

  document.addEventListener("pointerover", function (event) {
    var box = media(event.target);
    if (event.pointerType === "mouse" && box && !box.contains(event.relatedTarget)) play(box);
  });

  document.addEventListener("pointerout", function (event) {
    var box = media(event.target);
    if (event.pointerType === "mouse" && box && !box.contains(event.relatedTarget)) stop(box);
  });

  document.addEventListener("click", function (event) {
    if (!(event.target instanceof Element)) return;
    var box = media(event.target);
    if (box && lastPointer !== "mouse") { // a tap plays (or stops) the clip instead of leaving the page
      event.preventDefault();
      document.querySelectorAll(".card-media.playing").forEach(function (other) { if (other !== box) stop(other); });
      if (box.classList.contains("playing")) stop(box); else play(box);
      return;
    }
    if (event.target.closest("a, button, form, input, select, textarea, video")) return;
    var card = event.target.closest(".card[data-href]");
    if (card) window.location.assign(card.dataset.href);
  });

  function missing(img) { img.classList.add("missing"); }

  // `error` does not bubble: caught on its way down instead. Posters that failed before this script ran: below.
  document.addEventListener("error", function (event) {
    if (event.target instanceof HTMLImageElement && event.target.classList.contains("poster")) missing(event.target);
  }, true);
  document.querySelectorAll("img.poster").forEach(function (img) {
    if (img.complete && img.naturalWidth === 0) missing(img);
  });
})();
