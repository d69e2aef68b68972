// Drives the Swagger UI at BASE_URL/docs in Debian's headless Chromium, as a person would:
// open `POST /`, "Try it out", send {"data": "hello"}, "Execute", and expect OLLEH in the
// response panel. Fails when any request of the page leaves the service (the UI's assets must
// be served by shout-proxy itself, with no internet), and saves a screenshot either way.
//
// Environment: BASE_URL (http://127.0.0.1:PORT), SCREENSHOT (PNG path). The browser is Debian's
// chromium, which .ci/browser-test.sh installs.

import { chromium } from 'playwright-core';

const baseUrl = process.env.BASE_URL ?? 'http://127.0.0.1:8080';
const screenshot = process.env.SCREENSHOT ?? 'target/browser/swagger.png';
const service = new URL(baseUrl);

// Flags from the machine notes: without the background-networking ones Chromium keeps trying
// to reach Google's hosts, which this network refuses.
const args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const [failures, requests] = [[], []];

// A fresh browser profile in a temporary directory that Playwright removes on close.
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args });
const page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });

try {
  // Record every request; let only the service's own through, so a stray fetch fails fast
  // instead of hanging on the closed network.
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    requests.push(`${route.request().method()} ${url.href}`);
    // Through: the service's own host and port, and inline data.
    if (['data:', 'blob:', 'about:'].includes(url.protocol) || url.host === service.host) return route.continue();
    failures.push(`a request left ${service.host}: ${url.href}`);
    return route.abort('blockedbyclient');
  });
  page.on('pageerror', (error) => failures.push(`page error: ${error}`));

  const docs = await page.goto(`${baseUrl}/docs`, { waitUntil: 'load' });
  if (docs?.status() !== 200) failures.push(`GET /docs answered ${docs?.status()}`);

  // The operation block of `POST /` (tag Shout, operationId shout), expanded.
  const operation = page.locator('#operations-Shout-shout');
  await operation.waitFor();
  await operation.locator('.opblock-summary').first().click();
  await operation.getByRole('button', { name: 'Try it out' }).click();

  await operation.locator('textarea.body-param__text').fill('{"data": "hello"}');

  const answered = page.waitForResponse((r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/');
  await operation.getByRole('button', { name: 'Execute' }).click();
  const response = await answered;
  if (response.status() !== 200) failures.push(`POST / from the UI answered ${response.status()}`);

  // What the person sees: the live response panel with the status and the body.
  const panel = operation.locator('.live-responses-table');
  await panel.getByText('OLLEH').first().waitFor().catch(() => {});
  const shown = await panel.innerText().catch(() => '');
  if (!shown.includes('OLLEH')) failures.push(`the response panel does not show OLLEH; it shows: ${shown.slice(0, 500)}`);
  if (!/\b200\b/.test(shown)) failures.push('the response panel does not show status 200');
} catch (error) {
  failures.push(`the UI could not be driven: ${error.message.split('\n')[0]}`);
} finally {
  // Playwright creates the screenshot's directory. Taken whatever happened as a CI artefact.
  await page.screenshot({ path: screenshot, fullPage: true }).catch((error) => failures.push(`no screenshot: ${error.message}`));
  await browser.close();
}

console.log(`requests made by the page (${requests.length}):\n  ${requests.join('\n  ')}\nscreenshot: ${screenshot}`);
if (failures.length > 0) {
  console.log(`swagger-ui: FAILED\n  - ${failures.join('\n  - ')}`);
  process.exit(1);
}
console.log('swagger-ui: PASSED (POST / via "Try it out" showed OLLEH; every request stayed on the service)');
