// Opens an `emo analyze` report in headless chromium (playwright-core) and checks that it works offline:
// no console error, no uncaught exception, no network request; the maps are drawn; clicking a cluster shows
// its snippets with the token highlighted; the toggles and the layer slider redraw without error. Saves a
// full-page screenshot. Usage: node report_test.js PLAYWRIGHT_CORE_DIR REPORT_HTML SCREENSHOT_PNG
'use strict';
const path = require('path');

const [playwrightDir, reportPath, screenshotPath] = process.argv.slice(2);
const {chromium} = require(playwrightDir);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Pixels of a canvas that are not white: a drawn map has many.
async function inkedPixels(page, selector) {
  return page.$eval(selector, (canvas) => {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let inked = 0;
    for (let i = 0; i < data.length; i += 4)
      if (data[i + 3] > 0 && (data[i] < 250 || data[i + 1] < 250 || data[i + 2] < 250)) inked++;
    return inked;
  });
}

async function main() {
  const browser = await chromium.launch(
      {executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox']});
  const problems = [];
  try {
    const page = await browser.newPage({viewport: {width: 1400, height: 1000}});
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
    });
    page.on('pageerror', (error) => problems.push(`uncaught: ${error.message}`));
    page.on('request', (request) => {
      if (!/^(file|data|about):/.test(request.url())) problems.push(`network request: ${request.url()}`);
    });
    await page.goto('file://' + path.resolve(reportPath));
    await page.waitForSelector('body[data-ready="true"]', {timeout: 15000});

    check(
        (await inkedPixels(page, '[data-testid="map-0"]')) > 100,
        'the token map of the first model is blank');
    check(
        (await page.locator('#map-models canvas').count()) === 2,
        'expected two maps side by side (comparison)');
    const clusters = page.locator('[data-testid="clusters-0"] [data-testid="cluster"]');
    check((await clusters.count()) > 0, 'no cluster listed');
    check((await page.locator('[data-testid="snippet"]').count()) === 0, 'snippets shown before any click');

    const first = clusters.first();
    await first.locator('.cluster-head').click();
    const snippets = first.locator('[data-testid="snippet"]');
    await snippets.first().waitFor({timeout: 5000});
    const count = await snippets.count();
    check(count >= 1, 'clicking a cluster showed no snippet');
    const highlighted = await snippets.first().locator('mark').textContent();
    check(highlighted !== null && highlighted.length > 0, 'the snippet has no highlighted token');
    console.log(`cluster ${await first.getAttribute('data-cluster')}: ${count} snippets, first token ${
        JSON.stringify(highlighted)}`);

    // Every control redraws without error.
    await page.click('#points-toggle button[data-value="documents"]');
    await page.click('#colour-toggle button[data-value="domain"]');
    check((await inkedPixels(page, '[data-testid="map-0"]')) > 10, 'the document map is blank');
    await page.click('#usage-toggle button[data-value="mass"]');
    await page.$eval('#layer-slider', (slider) => {
      slider.value = '0';
      slider.dispatchEvent(new Event('input'));
    });
    await page.click('#points-toggle button[data-value="tokens"]');
    await page.click('#colour-toggle button[data-value="cluster"]');
    await page.locator('[data-testid="map-0"]').hover({position: {x: 320, y: 230}});
    await first.locator('.cluster-head').click();  // closes it again
    check(
        (await first.locator('[data-testid="snippet"]').count()) === 0,
        'a second click did not close the cluster');
    await first.locator('.cluster-head').click();
    await page.screenshot({path: screenshotPath, fullPage: true});
    console.log(`screenshot: ${screenshotPath}`);
  } finally {
    await browser.close();
  }
  check(problems.length === 0, problems.join('\n'));
  console.log('report ok: no console errors, no network requests');
}

main().catch((error) => {
  console.error(`browser test failed: ${error.message}`);
  process.exit(1);
});
