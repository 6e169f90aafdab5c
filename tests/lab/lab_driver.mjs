// Drives JupyterLab with the Potluck extension in headless Chromium (Debian's), for tests/lab.
//
// Run by tests/lab/test_lab_browser.py, never by hand-written browser downloads:
//   node lab_driver.mjs            with LAB_E2E_CONFIG='{"...": ...}' in the environment
// Config: playwright (path of the playwright-core package), chromium (executable), artifacts (dir),
// user_url / admin_url (each a lab URL with ?token=), notebook (path in the user lab's root), marker
// (text the inferlet prints), model (the engine's model name), context (a saved context of the user),
// tenant (the user's name), tenants (two users whose usage the dashboard must plot), new_limit (the
// tokens_per_minute the admin sets for tenants[1] in the dashboard), engine_page_url /
// engine_page_user_url (the engine's own dashboard page with an admin's / a user's token in the
// fragment), user_lab_url (the user lab, opened again once the engine is stopped), timeout_ms.
//
// Protocol on stdout: one JSON object a line. {"checkpoint": NAME, ...} asks the test for something
// (the driver then waits for one line on stdin, the test's answer: {"ok": true} or {"error": "..."});
// {"screenshot": PATH}; the last line is {"result": "ok", ...observations} or
// {"result": "error", "step", "message", ...}.

import { createRequire } from 'module';
import { createInterface } from 'readline';
import path from 'path';

const cfg = JSON.parse(process.env.LAB_E2E_CONFIG);
const require = createRequire(import.meta.url);
const { chromium } = require(cfg.playwright);
const T = cfg.timeout_ms || 60000;

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(checkpoint, data = {}) {
  out({ checkpoint, ...data });
  const { value, done } = await stdin.next();
  if (done) throw new Error(`the test closed stdin at checkpoint ${checkpoint}`);
  const answer = JSON.parse(value);
  if (answer.error) throw new Error(`checkpoint ${checkpoint}: ${answer.error}`);
  return answer;
}

const observed = { screenshots: [], console_errors: [] };
let step = 'launch';
let currentPage = null;

async function shot(page, name) {
  const file = path.join(cfg.artifacts, name);
  await page.screenshot({ path: file, fullPage: false });
  observed.screenshots.push(file);
  out({ screenshot: file });
}

// The first number in the status item's text: the tokens used this minute ("Potluck 120/2000 tok/min ...").
function tokensThisMinute(text) {
  const m = /([\d][\d,.]*)\s*([kKmM]?)\s*(?:\/\s*[^\s]+\s*)?tok\/min/.exec(text || '');
  if (!m) return null;
  const mult = { k: 1e3, K: 1e3, m: 1e6, M: 1e6 }[m[2]] || 1;
  return parseFloat(m[1].replace(/,/g, '')) * mult;
}

async function waitFor(what, fn, timeout = T, interval = 250) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, interval));
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
}

function watchConsole(page, who) {
  page.on('pageerror', (e) => observed.console_errors.push(`${who} pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') observed.console_errors.push(`${who} console: ${m.text().slice(0, 300)}`);
  });
}

async function openPanel(page) {
  await page.locator('#potluck-status').click();
  await page.locator('#potluck-panel').waitFor({ state: 'visible', timeout: T });
}

// Wait until a dashboard's per-user chart has a line for each of `names` with use in it; their totals.
async function seriesOf(dash, names, where) {
  const chart = dash.locator('figure.jp-PotluckDash-chart[data-kind="users"]');
  return await waitFor(`${where}: a line per user (${names.join(', ')}) in the per-user chart`, async () => {
    const lines = await chart.locator('path.jp-PotluckDash-line').evaluateAll((ps) =>
      Object.fromEntries(ps.map((p) => [p.getAttribute('data-series'), {
        total: Number(p.getAttribute('data-total')), points: (p.getAttribute('d').match(/[ML]/g) || []).length }])));
    return names.every((n) => lines[n] && lines[n].total > 0) ? lines : null;
  }, 60000, 500);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  try {
    // ------------------------------------------------------------ the user (not an admin)
    step = 'open the user lab';
    const ctxUser = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const page = await ctxUser.newPage();
    currentPage = page;
    watchConsole(page, 'user');
    await page.goto(cfg.user_url, { waitUntil: 'domcontentloaded', timeout: T });

    step = 'status item';
    const status = page.locator('#potluck-status');
    await status.waitFor({ state: 'visible', timeout: T });
    const before = await waitFor('the status item to show tok/min',
      async () => { const t = await status.innerText(); return /tok\/min/.test(t) && tokensThisMinute(t) !== null ? t : null; });
    observed.status_before = before;
    observed.status_level_before = await status.getAttribute('data-level');
    observed.status_class = await status.getAttribute('class');
    // The test generates as this user directly against the engine and answers with the engine's own
    // count of this minute's tokens: the status item must come to show (at least) that number.
    const { engine_tokens: engineTokens } = await ask('status_before', { text: before, tokens: tokensThisMinute(before) });
    observed.engine_tokens = engineTokens;

    step = 'status item follows the engine';
    const after = await waitFor(`the tokens-this-minute number to reach the engine's ${engineTokens}`,
      async () => {
        const t = await status.innerText();
        const n = tokensThisMinute(t);
        return n > 0 && n >= engineTokens && n > tokensThisMinute(before) ? t : null;
      }, 30000);
    observed.status_after = after;
    observed.status_level_after = await status.getAttribute('data-level');
    await shot(page, '01-status-bar.png');

    step = 'notebook on the Potluck kernel';
    // The notebook was opened by the URL (/lab/tree/NOTEBOOK); wait for its cell and a live kernel.
    const editor = page.locator('.jp-NotebookPanel .jp-Cell .cm-content').first();
    await editor.waitFor({ state: 'visible', timeout: T });
    await waitFor('the Potluck kernel to be idle', async () => {
      const ind = page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator').first();
      if (await ind.count()) return (await ind.getAttribute('data-status')) === 'idle';
      return /Python 3 \(Potluck\)\s*\|\s*Idle/.test(await page.locator('#jp-main-statusbar').innerText());
    }, 90000, 500);
    observed.kernel_label = (await page.locator('.jp-NotebookPanel .jp-KernelName, .jp-NotebookPanel .jp-Toolbar-kernelName').first().innerText().catch(() => '')).trim();
    await editor.click();
    await page.keyboard.press('Shift+Enter');

    step = 'the run appears in the panel';
    await openPanel(page);
    const panel = page.locator('#potluck-panel');
    observed.engine_text = (await panel.locator('.jp-Potluck-engine').first().innerText({ timeout: T })).trim();
    const runRow = panel.locator('.jp-Potluck-runs tr[data-run-id]');
    const runId = await waitFor('a running run in .jp-Potluck-runs', async () => {
      const n = await runRow.count();
      for (let i = 0; i < n; i++) {
        const row = runRow.nth(i);
        const state = (await row.locator('.jp-Potluck-runState').innerText().catch(() => '')).trim();
        if (state === 'running') return await row.getAttribute('data-run-id');
      }
      return null;
    }, 90000, 500);
    observed.run_id = runId;
    const row = panel.locator(`.jp-Potluck-runs tr[data-run-id="${runId}"]`);
    const outputOf = async () => {
      const sep = panel.locator(`.jp-Potluck-runOutput[data-run-id="${runId}"]`);
      const texts = [await row.innerText().catch(() => '')];
      if (await sep.count()) texts.push(await sep.first().innerText().catch(() => ''));
      return texts.join('\n');
    };
    observed.run_output = await waitFor(`the run's output to contain ${cfg.marker}`, async () => {
      const t = await outputOf();
      return t.includes(cfg.marker) ? t : null;
    }, 60000, 500);
    observed.run_output_element = (await panel.locator(`.jp-Potluck-runOutput[data-run-id="${runId}"]`).count()) > 0;
    // The context the test saved through the engine is listed too.
    await panel.locator(`.jp-Potluck-contexts tr[data-context="${cfg.context}"]`).waitFor({ state: 'visible', timeout: T });
    observed.context_listed = true;
    observed.quota_fields = await panel.locator('.jp-Potluck-quota tr[data-field]').evaluateAll(
      (rows) => rows.map((r) => r.getAttribute('data-field')));
    await row.scrollIntoViewIfNeeded();
    await shot(page, '02-panel-run-output.png');
    await ask('run_running', { run_id: runId });

    step = 'cancel the run from the panel';
    await row.locator('button.jp-Potluck-cancel').click();
    await acceptDialogIfAny(page);
    observed.state_after_cancel = await waitFor('the run state to become cancelled', async () => {
      const s = (await row.locator('.jp-Potluck-runState').innerText().catch(() => '')).trim();
      return s === 'cancelled' ? s : null;
    }, 60000, 500);
    observed.cancel_button_after = await row.locator('button.jp-Potluck-cancel').count();
    await shot(page, '03-run-cancelled.png');
    await ask('run_cancelled', { run_id: runId });
    // The cell that blocked on the run returns; its output shows what the inferlet printed.
    observed.cell_output = await waitFor('the cell to finish', async () => {
      const ind = page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator').first();
      const idle = (await ind.count()) ? (await ind.getAttribute('data-status')) === 'idle' : true;
      const t = await page.locator('.jp-NotebookPanel .jp-Cell .jp-OutputArea').first().innerText().catch(() => '');
      return idle && t ? t : null;
    }, 30000, 500).catch(() => null);

    step = 'no admin view for a user';
    observed.user_admin_count = await panel.locator('.jp-Potluck-admin').count();
    // Nor a dashboard in the user's launcher (Ctrl+Shift+L opens one).
    await page.keyboard.press('Control+Shift+L');
    observed.user_launcher_open = await page.locator('.jp-Launcher').first()
      .waitFor({ state: 'visible', timeout: 15000 }).then(() => true, () => false);
    observed.user_dashboard_cards = await page.locator('.jp-LauncherCard', { hasText: 'Potluck Admin Dashboard' }).count();

    step = 'delete a saved context from the panel';
    const ctxRow = panel.locator(`.jp-Potluck-contexts tr[data-context="${cfg.context}"]`);
    await ctxRow.locator('button.jp-Potluck-delete').click();
    await acceptDialogIfAny(page);
    await ctxRow.waitFor({ state: 'detached', timeout: T });
    observed.context_gone = true;
    observed.user_errors = await panel.locator('.jp-Potluck-error').allInnerTexts();
    await shot(page, '04-user-view-no-admin.png');
    await ask('context_deleted', { context: cfg.context });
    await ctxUser.close();

    // ------------------------------------------------------------ an admin: panel button, launcher, dashboard
    step = 'open the admin lab';
    const ctxAdmin = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const apage = await ctxAdmin.newPage();
    currentPage = apage;
    watchConsole(apage, 'admin');
    await apage.goto(cfg.admin_url, { waitUntil: 'domcontentloaded', timeout: T });
    await apage.locator('#potluck-status').waitFor({ state: 'visible', timeout: T });
    // A second user generates now, so the dashboard has two users' usage over time to show.
    const { run_id: otherRun } = await ask('two_users_used_it');

    step = 'the launcher offers the dashboard to an admin';
    const card = apage.locator('.jp-LauncherCard', { hasText: 'Potluck Admin Dashboard' });
    observed.launcher_card = await waitFor('the launcher card', async () => (await card.count()) > 0, 30000)
      .catch(() => false);

    step = 'the admin view: a button in the panel';
    await openPanel(apage);
    const admin = apage.locator('#potluck-panel .jp-Potluck-admin');
    await admin.waitFor({ state: 'visible', timeout: T });
    await admin.locator('button.jp-Potluck-openDashboard').click();

    step = 'the dashboard: two users over time';
    const dash = apage.locator('#potluck-dashboard');
    await dash.waitFor({ state: 'visible', timeout: T });
    observed.dashboard_lines = await seriesOf(dash, cfg.tenants, 'the lab dashboard');
    observed.admin_tenants = await dash.locator('.jp-PotluckDash-users tr[data-tenant]').evaluateAll(
      (rows) => rows.map((r) => r.getAttribute('data-tenant')));
    observed.dashboard_in_main_area = (await apage.locator('#jp-main-dock-panel #potluck-dashboard').count()) === 1;
    await shot(apage, '05-admin-dashboard.png');

    step = 'the dashboard: edit a quota';
    const target = cfg.tenants[1];
    const trow = dash.locator(`.jp-PotluckDash-users tr[data-tenant="${target}"]`);
    await trow.locator('button.jp-Potluck-editQuota').click();
    const form = dash.locator(`form.jp-Potluck-quotaForm[data-tenant="${target}"]`);
    await form.waitFor({ state: 'visible', timeout: T });
    await form.locator('input[name=tokens_per_minute]').fill(String(cfg.new_limit));
    await shot(apage, '06-dashboard-quota-form.png');
    await form.locator('button.jp-Potluck-saveQuota').click();
    await form.waitFor({ state: 'detached', timeout: T });
    observed.minute_cell_after_edit = await waitFor(`${target}'s row to show the new limit`, async () => {
      const t = (await trow.locator('.jp-PotluckDash-tenantMinute').innerText()).trim();
      return t.includes(`/ ${cfg.new_limit}`) ? t : null;
    }, 30000);
    observed.source_cell_after_edit = (await trow.locator('.jp-PotluckDash-tenantSource').innerText()).trim();
    observed.dashboard_errors = await dash.locator('.jp-PotluckDash-error:visible').allInnerTexts();
    await ask('quota_edited', { tenant: target });

    step = "the dashboard: cancel another user's run";
    const runRowAdmin = dash.locator(`.jp-PotluckDash-runs tr[data-admin-run="${target}/${otherRun}"]`);
    await runRowAdmin.waitFor({ state: 'visible', timeout: T });
    await runRowAdmin.locator('button.jp-Potluck-adminCancel').click();
    observed.admin_cancelled_state = await waitFor(`${target}'s run to show cancelled`, async () => {
      const st = (await runRowAdmin.locator('.jp-PotluckDash-runState').innerText()).trim();
      return st === 'cancelled' ? st : null;
    }, 30000);
    observed.admin_cancel_buttons_after = await runRowAdmin.locator('button.jp-Potluck-adminCancel').count();
    await ask('run_cancelled_by_admin', { run_id: otherRun });
    await ctxAdmin.close();

    // ------------------------------------------------------------ the engine's own page, in a plain browser
    step = "the engine's dashboard page";
    const ctxPage = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const ppage = await ctxPage.newPage();
    currentPage = ppage;
    watchConsole(ppage, 'engine page');
    await ppage.goto(cfg.engine_page_url, { waitUntil: 'domcontentloaded', timeout: T });
    const pdash = ppage.locator('.jp-PotluckDash');
    await pdash.waitFor({ state: 'visible', timeout: T });
    observed.engine_page_lines = await seriesOf(pdash, cfg.tenants, "the engine's page");
    observed.engine_page_url_after = ppage.url();
    await shot(ppage, '07-engine-dashboard-page.png');
    step = "the engine's page refuses a non-admin";
    const upage = await ctxPage.newPage();
    await upage.goto(cfg.engine_page_user_url, { waitUntil: 'domcontentloaded', timeout: T });
    observed.engine_page_user_error = await waitFor('the page to say admins only', async () => {
      const t = (await upage.locator('.jp-PotluckDash-error').innerText().catch(() => '')).trim();
      return /admins only/.test(t) ? t : null;
    });
    observed.engine_page_user_lines = await upage.locator('path.jp-PotluckDash-line').count();
    await ctxPage.close();

    // ------------------------------------------------------------ the engine goes away
    step = 'engine unreachable in the panel';
    await ask('stop_engine');
    const ctxDown = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const dpage = await ctxDown.newPage();
    currentPage = dpage;
    await dpage.goto(cfg.user_lab_url, { waitUntil: 'domcontentloaded', timeout: T });
    await dpage.locator('#potluck-status').waitFor({ state: 'visible', timeout: T });
    await openPanel(dpage);
    const dpanel = dpage.locator('#potluck-panel');
    observed.down_error = await waitFor('the panel to say engine unreachable', async () => {
      const t = (await dpanel.locator('.jp-Potluck-error').innerText().catch(() => '')).trim();
      return t.startsWith('engine unreachable') ? t : null;
    });
    observed.down_runs_text = (await dpanel.locator('.jp-Potluck-runsSection .jp-Potluck-empty').innerText()).trim();
    observed.down_contexts_text = (await dpanel.locator('.jp-Potluck-contextsSection .jp-Potluck-empty').innerText()).trim();
    observed.down_status_title = await dpage.locator('#potluck-status').getAttribute('title');
    await shot(dpage, '08-engine-unreachable.png');
    await ctxDown.close();

    out({ result: 'ok', ...observed });
  } catch (e) {
    if (currentPage) {
      try { await shot(currentPage, `error-${step.replace(/[^a-z0-9]+/gi, '-')}.png`); } catch {}
    }
    out({ result: 'error', step, message: String(e && e.stack || e).slice(0, 2000), ...observed });
    process.exitCode = 1;
  } finally {
    await browser.close();
    process.stdin.destroy();
  }
}

// A confirmation dialog (JupyterLab's showDialog) after a destructive click, if the extension asks.
async function acceptDialogIfAny(page) {
  const accept = page.locator('.jp-Dialog .jp-mod-accept');
  try {
    await accept.waitFor({ state: 'visible', timeout: 1500 });
    await accept.click();
  } catch { /* no dialog */ }
}

main();
