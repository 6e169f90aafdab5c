// Drives the engine's dashboard page under a real JupyterHub in headless Chromium (Debian's), for
// tests/hub/test_hub_dashboard.py: log in on the Hub's page, open /services/potluck/ (authorizing
// the service if the Hub asks), read its Engines section, edit a group's quota there, and report
// what the page showed.
//
//   node hub_dashboard_driver.mjs   with HUB_DASHBOARD_CONFIG='{"...": ...}' in the environment
// Config: playwright (path of playwright-core), chromium (executable), artifacts (dir), hub_url,
// user, password, group (to edit), field, value, timeout_ms.
// Prints one JSON line: {"result": "ok", ...observations} or {"result": "error", "step", "message"}.

import { createRequire } from 'module';
import path from 'path';

const cfg = JSON.parse(process.env.HUB_DASHBOARD_CONFIG);
const require = createRequire(import.meta.url);
const { chromium } = require(cfg.playwright);
const T = cfg.timeout_ms || 60000;
const observed = { console_errors: [] };
let step = 'launch';
let page = null;

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    page = await ctx.newPage();
    page.on('pageerror', (e) => observed.console_errors.push(`pageerror: ${e.message}`));

    step = "log in on the Hub's page";
    await page.goto(`${cfg.hub_url}/hub/login`, { waitUntil: 'domcontentloaded', timeout: T });
    await page.locator('input[name=username]').fill(cfg.user);
    await page.locator('input[name=password]').fill(cfg.password);
    await Promise.all([page.waitForNavigation({ timeout: T }), page.locator('input[type=submit], button[type=submit]').first().click()]);

    step = 'open /services/potluck/';
    await page.goto(`${cfg.hub_url}/services/potluck/`, { waitUntil: 'domcontentloaded', timeout: T });
    const authorize = page.locator('form button[type=submit]', { hasText: 'Authorize' });
    if (await authorize.count()) {
      observed.authorized_the_service = true;
      await Promise.all([page.waitForNavigation({ timeout: T }), authorize.click()]);
    }
    observed.url = page.url();
    const dash = page.locator('.jp-PotluckDash');
    await dash.waitFor({ state: 'visible', timeout: T });

    step = 'read the Engines section';
    const engineRows = dash.locator('.jp-PotluckDash-engines tr[data-engine]');
    await engineRows.first().waitFor({ state: 'visible', timeout: T });
    observed.engines = await engineRows.evaluateAll((rows) => rows.map((r) => ({
      name: r.dataset.engine, this: r.dataset.this, state: r.dataset.state, pool: r.cells[1].innerText.trim(),
      href: r.querySelector('a.jp-PotluckDash-engineLink')?.getAttribute('href') || null, text: r.innerText.trim(),
    })));

    step = `edit the quota of group ${cfg.group}`;
    const row = dash.locator(`.jp-PotluckDash-groups tr[data-group="${cfg.group}"]`);
    await row.waitFor({ state: 'visible', timeout: T });
    observed.group_row = (await row.innerText()).trim();
    await row.locator('button.jp-PotluckDash-editGroup').click();
    const form = dash.locator(`form.jp-PotluckDash-groupForm[data-group="${cfg.group}"]`);
    await form.waitFor({ state: 'visible', timeout: T });
    observed.form_value_before = await form.locator(`input[name=${cfg.field}]`).inputValue();
    await form.locator(`input[name=${cfg.field}]`).fill(String(cfg.value));
    await form.locator('button.jp-PotluckDash-saveGroup').click();
    await form.waitFor({ state: 'detached', timeout: T });
    observed.notice = (await dash.locator('.jp-PotluckDash-notice').innerText()).trim();
    observed.errors = await dash.locator('.jp-PotluckDash-error:visible').allInnerTexts();
    await page.screenshot({ path: path.join(cfg.artifacts, 'hub-dashboard-group-edit.png') });
    console.log(JSON.stringify({ result: 'ok', ...observed }));
  } catch (e) {
    if (page) {
      try { await page.screenshot({ path: path.join(cfg.artifacts, 'hub-dashboard-error.png') }); } catch {}
    }
    console.log(JSON.stringify({ result: 'error', step, message: String(e && e.stack || e).slice(0, 2000), ...observed }));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main();
