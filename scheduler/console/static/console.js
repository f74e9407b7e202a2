// catalogan console: polling, the image grid's keyboard review, and loading more tiles. No build step.
"use strict";

const POLL_MS = 3000;

function csrfToken() {
  const main = document.getElementById("main");
  return main ? main.dataset.csrf : "";
}

// -- the jobs list: refresh the table while any listed job is still running ------------------------------
function pollJobs() {
  const table = document.getElementById("jobs");
  if (!table || table.dataset.poll !== "yes") return;
  setTimeout(async () => {
    try {
      const response = await fetch(location.href, { headers: { Accept: "text/html" } });
      if (response.ok) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = doc.getElementById("jobs");
        if (fresh) {
          table.tBodies[0].replaceWith(fresh.tBodies[0]);
          table.dataset.poll = fresh.dataset.poll;
        }
      }
    } finally {
      pollJobs();
    }
  }, POLL_MS);
}

// -- a job's page: follow its progress until it finishes, then reload once ------------------------------
function pollJob() {
  const summary = document.getElementById("job-summary");
  if (!summary || summary.dataset.terminal === "yes") return;
  setTimeout(async () => {
    try {
      const response = await fetch(`/console/jobs/${summary.dataset.job}/summary`, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        const field = (name) => summary.querySelector(`[data-field="${name}"]`);
        field("status").textContent = job.status;
        field("status").className = `status status-${job.status}`;
        field("progress").value = job.progress;
        field("counts").textContent = `${job.images_done} done, ${job.images_failed} failed, ${job.images_rejected} rejected by the gate, of ${job.images_total}`;
        if (job.terminal) { location.reload(); return; }
      }
    } finally {
      pollJob();
    }
  }, POLL_MS);
}

// -- the grid ---------------------------------------------------------------------------------------------
function tiles(grid) { return Array.from(grid.querySelectorAll("li.tile")); }

function focusedTile(grid) {
  const active = document.activeElement;
  return active && grid.contains(active) ? active.closest("li.tile") : null;
}

function columns(grid) {
  const all = tiles(grid);
  if (all.length < 2) return 1;
  const top = all[0].offsetTop;
  const n = all.findIndex((tile) => tile.offsetTop !== top);
  return n === -1 ? all.length : n;
}

function move(grid, tile, delta) {
  const all = tiles(grid);
  const at = tile ? all.indexOf(tile) : -1;
  const next = all[Math.max(0, Math.min(all.length - 1, at + delta))];
  if (next) next.querySelector(".tile-link").focus();
}

function toggle(tile, on) {
  const box = tile.querySelector("input.pick");
  if (!box) return;
  box.checked = on === undefined ? !box.checked : on;
  tile.classList.toggle("selected", box.checked);
}

async function review(grid, decision, targets) {
  const say = document.getElementById("review-status");
  const reviewable = targets.filter((tile) => tile.dataset.reviewable === "yes");
  if (!reviewable.length) { say.textContent = "Nothing to review: select delivered images first."; return; }
  const indices = reviewable.map((tile) => tile.dataset.index);
  const body = new URLSearchParams({ csrf_token: csrfToken(), decision, indices: indices.join(","), note: document.getElementById("review-note").value });
  const response = await fetch(`/console/jobs/${grid.dataset.job}/reviews`, {
    method: "POST", body, headers: { Accept: "application/json" }, credentials: "same-origin",
  });
  if (!response.ok) { say.textContent = `Not saved (HTTP ${response.status}): ${await response.text()}`; return; }
  const result = await response.json();
  for (const tile of reviewable) {
    tile.classList.remove("review-pending", "review-approved", "review-rejected", "review-none");
    tile.classList.add(`review-${decision}`);
    const badge = tile.querySelector("[data-review-badge]");
    if (badge) badge.textContent = decision;
    toggle(tile, false);
  }
  const counts = result.reviews;
  const reviews = document.querySelector('[data-field="reviews"]');
  if (reviews) reviews.textContent = `${counts.approved} approved, ${counts.rejected} rejected, ${counts.pending} pending`;
  say.textContent = `${decision === "approved" ? "Approved" : "Rejected"} image${indices.length > 1 ? "s" : ""} ${indices.join(", ")}.`;
}

function targetsFor(grid) {
  const picked = tiles(grid).filter((tile) => tile.querySelector("input.pick:checked"));
  if (picked.length) return picked;
  const tile = focusedTile(grid);
  return tile ? [tile] : [];
}

async function loadMore(grid) {
  if (grid.dataset.loading === "yes" || grid.dataset.nextAfter === "") return;
  grid.dataset.loading = "yes";
  try {
    const filters = grid.dataset.filters ? `&${grid.dataset.filters}` : "";
    const response = await fetch(`/console/jobs/${grid.dataset.job}/tiles?after=${grid.dataset.nextAfter}${filters}`);
    if (!response.ok) return;
    grid.insertAdjacentHTML("beforeend", await response.text());
    grid.dataset.nextAfter = response.headers.get("X-Next-After") || "";
    if (grid.dataset.nextAfter === "") document.getElementById("grid-more").textContent = "All images shown.";
  } finally {
    grid.dataset.loading = "no";
  }
}

function setUpGrid() {
  const grid = document.getElementById("grid");
  if (!grid) return;
  grid.addEventListener("change", (event) => {
    if (event.target.matches("input.pick")) event.target.closest("li.tile").classList.toggle("selected", event.target.checked);
  });
  grid.addEventListener("keydown", (event) => {
    if (event.target.matches("input[type=text]") || event.altKey || event.ctrlKey || event.metaKey) return;
    const tile = focusedTile(grid);
    const key = event.key;
    const handled = {
      ArrowRight: () => move(grid, tile, 1), l: () => move(grid, tile, 1),
      ArrowLeft: () => move(grid, tile, -1), h: () => move(grid, tile, -1),
      ArrowDown: () => move(grid, tile, columns(grid)), j: () => move(grid, tile, columns(grid)),
      ArrowUp: () => move(grid, tile, -columns(grid)), k: () => move(grid, tile, -columns(grid)),
      x: () => tile && toggle(tile), " ": () => tile && toggle(tile),
      a: () => review(grid, "approved", targetsFor(grid)),
      r: () => review(grid, "rejected", targetsFor(grid)),
    }[key];
    if (handled) { event.preventDefault(); handled(); }
  });
  for (const button of document.querySelectorAll("[data-bulk]")) {
    button.addEventListener("click", () => review(grid, button.dataset.bulk, tiles(grid).filter((t) => t.querySelector("input.pick:checked"))));
  }
  const all = document.querySelector("[data-select-all]");
  if (all) all.addEventListener("click", () => tiles(grid).forEach((tile) => toggle(tile, true)));
  const more = document.querySelector("[data-load-more]");
  if (more) {
    more.addEventListener("click", (event) => { event.preventDefault(); loadMore(grid); });
    if ("IntersectionObserver" in window) {
      new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(grid); }).observe(more);
    }
  }
}

document.addEventListener("DOMContentLoaded", () => { pollJobs(); pollJob(); setUpGrid(); });
