// Types a group property into JupyterHub's own admin page, in headless Chromium (Debian's), as a
// hub admin does: log in, Admin -> Groups -> the group -> change a property's value -> Apply.
// Run by tests/hub/test_hub_admin_page.py with ADMIN_PAGE_CONFIG='{...}' in the environment:
// playwright (path of playwright-core), chromium (executable), hub (the Hub's URL), user, password,
// group, key, value (what to type), artifacts (dir for a screenshot). One JSON line on stdout:
// {"result": "ok", "shown": <the value the page showed before>} or {"result": "error", "step", "message"}.

import { createRequire } from 'module';
import path from 'path';

const cfg = JSON.parse(process.env.ADMIN_PAGE_CONFIG);
const { chromium } = createRequire(import.meta.url)(cfg.playwright);
let step = 'launch';
const browser = await chromium.launch({ executablePath: cfg.chromium, args: ['--no-sandbox'] });
const page = await browser.newPage();
page.setDefaultTimeout(30000);
try {
  step = 'login';
  await page.goto(`${cfg.hub}/hub/login`);
  await page.fill('#username_input', cfg.user);
  await page.fill('#password_input', cfg.password);
  await Promise.all([page.waitForNavigation(), page.click('#login_submit')]);
  step = 'groups';
  await page.goto(`${cfg.hub}/hub/admin`);
  await page.getByText('Manage Groups', { exact: true }).click();
  await page.getByRole('link', { name: cfg.group, exact: true }).click();
  step = 'edit';
  await page.getByText(`Editing Group ${cfg.group}`).waitFor();
  const value = page.locator(`tr:has(input[id="${cfg.key}"]) td:nth-child(2) input`);
  const shown = await value.inputValue();
  await value.fill(cfg.value);
  step = 'apply';
  const saved = page.waitForResponse((r) => r.url().includes(`/groups/${cfg.group}/properties`) &&
                                            r.request().method() === 'PUT');
  await page.getByRole('button', { name: 'Apply' }).click();
  const response = await saved;
  if (response.status() >= 300) throw new Error(`the Hub answered ${response.status()}`);
  await page.screenshot({ path: path.join(cfg.artifacts, 'hub-admin-group-edit.png') });
  process.stdout.write(JSON.stringify({ result: 'ok', shown }) + '\n');
} catch (e) {
  try { await page.screenshot({ path: path.join(cfg.artifacts, `hub-admin-${step}-failed.png`) }); } catch {}
  process.stdout.write(JSON.stringify({ result: 'error', step, message: String(e.message || e) }) + '\n');
} finally {
  await browser.close();
}
