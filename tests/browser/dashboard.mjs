// Drives the sluice dashboard in headless Chromium the way a person would,
// for tests/tests/dashboard_browser.rs (which starts the broker and makes
// the traffic). Every wait is for a condition, with a deadline.
//
// Environment:
//   SLUICE_DASHBOARD  http://HOST:PORT of the dashboard
//   CHROMIUM          the browser to drive (Debian's /usr/bin/chromium)
//   SCREENSHOTS       directory for the screenshots (created)
//   QUEUE             a queue with tasks (schedules: the schedule's queue)
//   MODE              "walkthrough" (no auth file), "sign-in" or "schedules"
// walkthrough:
//   DLQ               QUEUE's dead letter queue, holding one dead task
//   READY             how many tasks QUEUE holds ready before the redrive
// sign-in (a broker with --auth-file):
//   ADMIN_TOKEN       a token that administers every queue
//   READER_TOKEN      a token that may only consume from QUEUE
//   HIDDEN            a queue READER_TOKEN may not see
//   SCHEDULE          a schedule of QUEUE; HIDDEN_SCHEDULE: one of HIDDEN
// schedules (no auth file):
//   SCHEDULE          a running schedule of QUEUE that ticks every second
//
// Prints one line per step; exits 1 with the reason on the first failure.

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("SLUICE_DASHBOARD");
const queue = env("QUEUE");
const mode = env("MODE");
const shots = env("SCREENSHOTS");
mkdirSync(shots, { recursive: true });

const TIMEOUT = 30_000;
const step = (what) => console.log(`step: ${what}`);

// Waits until the text of the first element matching `selector` is `want`.
async function textIs(page, selector, want, what) {
  try {
    await page.waitForFunction(
      ([sel, w]) => {
        const el = document.querySelector(sel);
        return el !== null && el.textContent.trim() === w;
      },
      [selector, want],
      { timeout: TIMEOUT },
    );
  } catch (e) {
    const now = await page.locator(selector).first().textContent().catch(() => null);
    throw new Error(`${what}: wanted ${JSON.stringify(want)} in ${selector}, it reads ${JSON.stringify(now)}`);
  }
}

// A page that reports its script errors, and resources the page's policy
// blocked, into `problems`.
async function newPage(browser, problems, options) {
  const context = await browser.newContext(options);
  context.setDefaultTimeout(TIMEOUT);
  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // A refused sign-in or a missing page is an answer the test asks for.
    if (m.type() === "error" && !/status of 40[14]/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  return page;
}

async function walkthrough(browser, problems) {
  const dlq = env("DLQ");
  const ready = Number(env("READY"));
  const page = await newPage(browser, problems, { viewport: { width: 1280, height: 860 }, colorScheme: "light" });

  step("overview lists the queue with its depth");
  await page.goto(base + "/");
  const row = page.locator(`tr[data-key="${queue}"]`);
  await row.waitFor();
  await textIs(page, `tr[data-key="${queue}"] [data-f="ready"]`, String(ready), `${queue}'s ready count`);
  await textIs(page, `tr[data-key="${dlq}"] [data-f="ready"]`, "1", `${dlq}'s ready count`);
  // Its dead letters, linked to the dead letter queue's tasks.
  const dead = row.locator('a[data-show="dead_letter"]');
  if ((await dead.getAttribute("href")) !== `/queues/${dlq}/tasks`) throw new Error("no link to the dead letters");
  await textIs(page, `tr[data-key="${queue}"] a[data-show="dead_letter"]`, "1", "dead letters of the queue");
  // The page keeps itself current: the live marker is set by a poll.
  await page.locator('#live[data-state="ok"]').waitFor();
  await page.screenshot({ path: join(shots, "overview.png"), fullPage: true });

  step("the queue page draws its charts");
  await row.locator('a[data-f="name"]').click();
  await page.waitForURL(`**/queues/${queue}`);
  await page.locator("#chart-depth canvas").waitFor();
  // At least one sample of the history (the broker takes one every 5 s).
  await page.waitForFunction(() => Number(document.querySelector("#chart-depth")?.dataset.points) >= 1, null, {
    timeout: TIMEOUT,
  });
  for (const id of ["#chart-depth", "#chart-rates"]) {
    const box = await page.locator(`${id} canvas`).first().boundingBox();
    if (!box || box.width < 100 || box.height < 50) throw new Error(`${id}'s canvas is ${JSON.stringify(box)}`);
  }
  await textIs(page, '[data-f="queue.ready"]', String(ready), "the queue page's ready count");
  await page.screenshot({ path: join(shots, "queue.png"), fullPage: true });

  step("pause asks first, then shows the queue paused; resume undoes it");
  await page.getByRole("button", { name: "Pause" }).click();
  await page.locator("dialog#confirm[open]").waitFor();
  await page.locator("#confirm-ok").click();
  await page.locator('h1 .badge[data-show="queue.paused"]').waitFor({ state: "visible" });
  await page.locator('.holds .hold[data-reason="paused"]').waitFor();
  await page.getByRole("button", { name: "Resume" }).click();
  await page.locator("#confirm-ok").click();
  await page.locator('h1 .badge[data-show="queue.paused"]').waitFor({ state: "hidden" });

  step("the dead letter queue's tasks show where they came from");
  await page.goto(base + `/queues/${dlq}/tasks`);
  const dlRow = page.locator('tbody[data-list="tasks"] tr[data-item]');
  await dlRow.first().waitFor();
  const n = await dlRow.count();
  if (n !== 1) throw new Error(`${n} dead letters listed, wanted 1`);
  await textIs(page, 'tbody[data-list="tasks"] [data-f="dead_from"]', queue, "the dead letter's origin");
  await page.screenshot({ path: join(shots, "dead-letters.png"), fullPage: true });

  step("redrive all, confirmed, moves the task back");
  await page.getByRole("button", { name: "Redrive all" }).click();
  await page.locator("dialog#confirm[open]").waitFor();
  const asked = await page.locator("#confirm-text").textContent();
  if (!asked.includes(dlq)) throw new Error(`the confirmation does not name the queue: ${asked}`);
  await page.locator("#confirm-ok").click();
  await dlRow.first().waitFor({ state: "detached" });
  await textIs(page, '[data-f="total"]', "0", "waiting tasks after the redrive");
  await page.locator("#toast").waitFor();

  step("the overview shows it back in its queue");
  await page.goto(base + "/");
  await textIs(page, `tr[data-key="${queue}"] [data-f="ready"]`, String(ready + 1), `${queue}'s ready count after`);
  await textIs(page, `tr[data-key="${dlq}"] [data-f="ready"]`, "0", `${dlq}'s ready count after`);

  step("jobs page");
  await page.getByRole("link", { name: "Jobs" }).click();
  await page.waitForURL("**/jobs");
  await page.locator("h1").filter({ hasText: "Jobs" }).waitFor();

  step("dark theme is remembered; a phone scrolls the table, not the page");
  const p2 = await newPage(browser, problems, {
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    colorScheme: "light",
  });
  await p2.goto(base + "/");
  await p2.locator("#theme").click();
  await p2.reload();
  const theme = await p2.evaluate(() => document.documentElement.dataset.theme);
  if (theme !== "dark") throw new Error(`theme after reload is ${theme}, wanted dark`);
  await p2.locator(`tr[data-key="${queue}"]`).waitFor();
  const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow}px wider than a phone`);
  await p2.screenshot({ path: join(shots, "overview-phone-dark.png"), fullPage: true });

}

// The number in the first element matching `selector`.
async function numberIn(page, selector) {
  const t = await page.locator(selector).first().textContent();
  return Number(t.replace(/,/g, ""));
}

async function schedules(browser, problems) {
  const name = env("SCHEDULE");
  const page = await newPage(browser, problems, { viewport: { width: 1280, height: 860 }, colorScheme: "light" });
  const row = `tbody[data-list="schedules"] tr[data-key="${name}"]`;

  step("the nav leads to the schedules page, which lists the schedule");
  await page.goto(base + "/");
  await page.getByRole("link", { name: "Schedules" }).click();
  await page.waitForURL("**/schedules");
  await page.locator(row).waitFor();
  await textIs(page, `${row} [data-f="when"]`, "every 1s", "when it ticks");
  await textIs(page, `${row} [data-f="queue"]`, queue, "its queue");
  if ((await page.locator(`${row} a[data-f="queue"]`).getAttribute("href")) !== `/queues/${queue}`) {
    throw new Error("the queue is not linked");
  }

  // Waits until the row's FIRED count is above what it reads now: the
  // schedule ticked and the page polled since.
  const firedGrows = async (what) => {
    const sel = `${row} [data-f="fired"]`;
    const n = await numberIn(page, sel);
    try {
      await page.waitForFunction(([s, m]) => Number(document.querySelector(s)?.textContent.replace(/,/g, "")) > m, [sel, n], {
        timeout: TIMEOUT,
      });
    } catch (e) {
      throw new Error(`${what}: FIRED stayed at ${n}`);
    }
  };

  step("it fires: FIRED grows as the page polls, the last task is shown, the next tick is seconds away");
  await firedGrows("the schedule firing");
  await page.waitForFunction((sel) => /^[0-9a-f]{16}$/.test(document.querySelector(sel)?.textContent.trim()), `${row} [data-f="last_task_id"]`, {
    timeout: TIMEOUT,
  });
  const next = (await page.locator(`${row} [data-f="next_tick_unix_ms"]`).textContent()).trim();
  if (!/^(in [12] s|now)$/.test(next)) throw new Error(`the next tick reads ${JSON.stringify(next)}`);
  await page.locator(`${row} .badge[data-hide="paused"]`).waitFor({ state: "visible" });
  await page.locator('#live[data-state="ok"]').waitFor();
  await page.screenshot({ path: join(shots, "schedules.png"), fullPage: true });

  step("delete asks first; cancelled, the schedule stays");
  await page.locator(row).getByRole("button", { name: "Delete" }).click();
  await page.locator("dialog#confirm[open]").waitFor();
  await page.getByRole("button", { name: "Cancel" }).click();
  await page.locator("dialog#confirm[open]").waitFor({ state: "detached" });
  await firedGrows("after the cancelled delete");
  await page.locator(row).waitFor();

  step("pause asks first, then shows the schedule paused, with no next tick");
  await page.locator(row).getByRole("button", { name: "Pause" }).click();
  await page.locator("dialog#confirm[open]").waitFor();
  const asked = await page.locator("#confirm-text").textContent();
  if (!asked.includes(name)) throw new Error(`the confirmation does not name the schedule: ${asked}`);
  await page.locator("#confirm-ok").click();
  await page.locator(`${row} .badge[data-show="paused"]`).waitFor({ state: "visible" });
  await page.locator(`${row} .badge[data-hide="paused"]`).waitFor({ state: "hidden" });
  await textIs(page, `${row} [data-f="next_tick_unix_ms"]`, "—", "the next tick while paused");
  await page.locator(row).getByRole("button", { name: "Resume" }).waitFor();
  await page.screenshot({ path: join(shots, "schedules-paused.png"), fullPage: true });

  step("the queue's page lists its schedule, paused");
  await page.goto(base + `/queues/${queue}`);
  await page.locator("section#schedules").waitFor({ state: "visible" });
  await page.locator(`section#schedules ${row} .badge[data-show="paused"]`).waitFor({ state: "visible" });
}

async function signIn(browser, problems) {
  const admin = env("ADMIN_TOKEN");
  const reader = env("READER_TOKEN");
  const hidden = env("HIDDEN");
  const schedule = env("SCHEDULE");
  const hiddenSchedule = env("HIDDEN_SCHEDULE");
  const page = await newPage(browser, problems, { viewport: { width: 1280, height: 860 } });

  step("nothing shows without a token: the overview sends to the sign-in page");
  await page.goto(base + "/");
  await page.waitForURL("**/login");

  step("an unknown token is refused, saying so");
  await page.fill("#token", "not-a-token");
  await page.click("#login button[type=submit]");
  await page.locator("#login-error:not([hidden])").waitFor();
  await page.screenshot({ path: join(shots, "sign-in.png") });

  step("a reader sees its queue only, and no buttons");
  await page.fill("#token", reader);
  await page.click("#login button[type=submit]");
  await page.waitForURL(base + "/");
  await page.locator(`tr[data-key="${queue}"]`).waitFor();
  if ((await page.locator(`tr[data-key="${hidden}"]`).count()) !== 0) throw new Error(`the reader sees ${hidden}`);
  const cookie = (await page.context().cookies()).find((c) => c.name === "sluice_token");
  if (!cookie || !cookie.httpOnly || cookie.sameSite !== "Strict") {
    throw new Error(`the session cookie is ${JSON.stringify(cookie)}: wanted HttpOnly, SameSite=Strict`);
  }
  await page.goto(base + `/queues/${queue}`);
  await page.locator("#chart-depth canvas").waitFor();
  if ((await page.locator("button[data-action]").count()) !== 0) throw new Error("the reader has action buttons");
  await page.goto(base + `/queues/${queue}/tasks`);
  await page.locator('tbody[data-list="tasks"]').waitFor({ state: "attached" });
  if ((await page.locator("#task-actions").count()) !== 0) throw new Error("the reader may redrive");
  const gone = await page.goto(base + `/queues/${hidden}`);
  if (gone.status() !== 404) throw new Error(`${hidden}'s page answers the reader ${gone.status()}`);
  await page.goto(base + "/schedules");
  await page.locator(`tr[data-key="${schedule}"]`).waitFor();
  if ((await page.locator(`tr[data-key="${hiddenSchedule}"]`).count()) !== 0) throw new Error(`the reader sees ${hiddenSchedule}`);
  if ((await page.locator("button[data-action]:visible").count()) !== 0) throw new Error("the reader has schedule buttons");

  step("sign out, then the admin signs in and has the buttons");
  await page.goto(base + "/");
  await page.click("#signout");
  await page.waitForURL("**/login");
  await page.goto(base + "/");
  await page.waitForURL("**/login");
  await page.fill("#token", admin);
  await page.click("#login button[type=submit]");
  await page.waitForURL(base + "/");
  await page.goto(base + `/queues/${queue}`);
  for (const name of ["Pause", "Purge", "Delete"]) await page.getByRole("button", { name }).waitFor();
  await page.goto(base + "/schedules");
  for (const s of [schedule, hiddenSchedule]) {
    for (const name of ["Pause", "Delete"]) await page.locator(`tr[data-key="${s}"]`).getByRole("button", { name }).waitFor();
  }
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  timeout: 60_000,
  // Root in CI containers: Chromium's sandbox needs user namespaces.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const problems = [];
try {
  if (mode === "walkthrough") await walkthrough(browser, problems);
  else if (mode === "sign-in") await signIn(browser, problems);
  else if (mode === "schedules") await schedules(browser, problems);
  else throw new Error(`unknown MODE ${mode}`);
  if (problems.length) throw new Error(problems.join("\n"));
  console.log("ok");
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}
