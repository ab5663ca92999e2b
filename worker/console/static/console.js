// The console's only script: refresh live parts, and ask before destructive actions.
document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll("[data-live]")) {
    const every = Number(el.dataset.everyMs || 3000);
    const refresh = async () => {
      try {
        const answer = await fetch(el.dataset.live, { credentials: "same-origin" });
        if (answer.ok) el.innerHTML = await answer.text();
      } catch (_) { /* offline for a moment: keep the last figures */ }
      setTimeout(refresh, every);
    };
    setTimeout(refresh, every);
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});
