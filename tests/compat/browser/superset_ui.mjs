// Drives Debian's headless Chromium (through playwright-core, which downloads no browser)
// through datagate in front of a real Superset 6.1, as a person would: sign in at the
// OIDC provider, open pages, type and run SQL, open a chart, download its CSV. Run by
// tests/superset_ui/mod.rs:
//
//   node superset_ui.mjs SPEC.json
//
// SPEC: {"base": "http://127.0.0.1:P", "chromium": "/usr/bin/chromium", "steps": [...]}
// with steps run in order in one browser profile (one user):
//
//   {"do": "welcome"}                      open `/`, sign in, wait for the home page
//   {"do": "sqllab", "sql": "..."}         SQL Lab: type the query, press Run, read the grid
//   {"do": "explore", "slice_id": 1}       open the chart, read its table, download its CSV
//   {"do": "dashboard", "dashboard_id": 1} the chart on a dashboard, "View as table", CSV
//   {"do": "navigate", "path": "/x", "marker": "m"}   open a page (X-Test-Marker: m)
//   {"do": "fetch", "method": "DELETE", "path": "/x", "marker": "m"}
//                                          the request a UI button sends, from the page
//
// Writes one JSON object to SPEC's `report` path (stdout when unset): every response the
// browser saw (`responses`), failed requests (`failed`, each with its step and whether the
// tab navigated or the browser was closing while it was in flight), console errors, and
// each step's findings (`steps`), in order. Exits 1 (with `error` in the JSON) when a
// step cannot complete.
// A file, not stdout: Node writes to a pipe asynchronously, and `process.exit` right after
// a write larger than the pipe's 64 KiB buffer cut the report off there.

import fs from 'node:fs';
import { chromium } from 'playwright-core';

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const base = spec.base.replace(/\/$/, '');
const TIMEOUT = 60000;

const report = { responses: [], failed: [], console_errors: [], steps: [] };

function sameOrigin(url) {
  return url.startsWith(base + '/') || url === base;
}

async function bodyOf(response) {
  try {
    return await response.text();
  } catch {
    return null;
  }
}

async function recordResponse(response) {
  const request = response.request();
  const entry = {
    method: request.method(),
    url: response.url(),
    status: response.status(),
    content_type: response.headers()['content-type'] || '',
    request_content_type: request.headers()['content-type'] || '',
  };
  if (sameOrigin(entry.url) && entry.status >= 400) {
    const text = await bodyOf(response);
    entry.body = text === null ? null : text.slice(0, 2000);
  }
  report.responses.push(entry);
}

// The JSON body of the next same-origin response matching `predicate`, with its status.
function nextJson(page, predicate) {
  return page
    .waitForResponse((response) => sameOrigin(response.url()) && predicate(response), { timeout: TIMEOUT })
    .then(async (response) => {
      const text = await bodyOf(response);
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {
        // not JSON: kept as text
      }
      return { status: response.status(), url: response.url(), json, text: json ? undefined : text };
    });
}

async function welcome(page) {
  await page.goto(base + '/', { timeout: TIMEOUT });
  await page.waitForURL(/\/superset\/welcome\/$/, { timeout: TIMEOUT });
  // Text React renders from the bundles: the page skeleton the server sends has none.
  await page.getByText('Home', { exact: true }).first().waitFor({ timeout: TIMEOUT });
  await page.getByText('Recents', { exact: true }).first().waitFor({ timeout: TIMEOUT });
  await page.waitForLoadState('networkidle', { timeout: TIMEOUT });
  const bootstrap = await page
    .locator('#app')
    .getAttribute('data-bootstrap')
    .then((text) => JSON.parse(text))
    .catch(() => null);
  return {
    url: page.url(),
    username: bootstrap?.user?.username ?? null,
    roles: Object.keys(bootstrap?.user?.roles ?? {}),
    menu: await page.locator('#main-menu, header, nav').first().innerText().catch(() => ''),
  };
}

async function readGrid(page) {
  // SQL Lab's result grid (ag-grid): header names in order, rows by row index.
  return page.evaluate(() => {
    const headers = [...document.querySelectorAll('.ag-header-viewport .ag-header-cell[col-id]')]
      .sort((a, b) => Number(a.getAttribute('aria-colindex')) - Number(b.getAttribute('aria-colindex')))
      .map((cell) => cell.getAttribute('col-id'));
    const rows = [...document.querySelectorAll('.ag-center-cols-container [role=row]')]
      .sort((a, b) => Number(a.getAttribute('row-index')) - Number(b.getAttribute('row-index')))
      .map((row) => headers.map((id) => row.querySelector(`[col-id="${CSS.escape(id)}"]`)?.innerText ?? null));
    return { columns: headers, rows };
  });
}

async function sqllab(page, step) {
  await page.goto(base + '/sqllab/', { timeout: TIMEOUT });
  await page.waitForLoadState('networkidle', { timeout: TIMEOUT });
  // A user's first visit has no tab yet; later visits reopen the tab Superset kept.
  const editor = page.locator('.ace_editor').first();
  const addTab = page.getByText('Add a new tab', { exact: true });
  await editor.or(addTab).first().waitFor({ timeout: TIMEOUT });
  if (!(await editor.isVisible())) {
    await addTab.click({ timeout: TIMEOUT });
  }
  await editor.waitFor({ timeout: TIMEOUT });
  // The database and schema SQL Lab picked for the new tab (the only database here).
  await page.getByText('demo', { exact: true }).first().waitFor({ timeout: TIMEOUT });
  await editor.click();
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Delete');
  await page.keyboard.insertText(step.sql);
  const typed = await page.evaluate(() => {
    const element = document.querySelector('.ace_editor');
    return element && window.ace ? window.ace.edit(element).getValue() : null;
  });
  // Close the editor's autocomplete popup, which would take the next click.
  await page.keyboard.press('Escape');
  const [execute] = await Promise.all([
    nextJson(page, (response) => response.url().includes('/api/v1/sqllab/execute/')),
    page.getByRole('button', { name: /Run/ }).first().click({ timeout: TIMEOUT }),
  ]);
  const expected = Array.isArray(execute.json?.data) ? execute.json.data.length : null;
  // ag-grid draws rows first and fills their cells later: wait for the cells' text.
  if (expected !== null && expected > 0) {
    await page.waitForFunction(
      (count) => [...document.querySelectorAll('.ag-center-cols-container [role=row]')]
        .filter((row) => row.innerText.trim() !== '').length >= count,
      expected,
      { timeout: TIMEOUT },
    );
  }
  await page.waitForLoadState('networkidle', { timeout: TIMEOUT });
  return { typed, execute, grid: await readGrid(page) };
}

async function readChartTable(page) {
  // The table chart draws a sticky header and the body as two tables.
  return page.evaluate(() => {
    const chart = document.querySelector('.superset-chart-table');
    if (!chart) return null;
    const columns = [...chart.querySelectorAll('thead th')].map((cell) => cell.innerText.trim());
    const rows = [...chart.querySelectorAll('tbody tr')].map((row) =>
      [...row.querySelectorAll('td')].map((cell) => cell.innerText.trim()),
    );
    return { columns, rows };
  });
}

// Opens the chart's "..." menu and hovers through `path` until `target` shows. Hover
// menus close when the pointer crosses the chart on its way: then it starts again.
async function openMenu(page, path, target) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      await page.keyboard.press('Escape');
      await page.getByRole('button', { name: 'Menu actions trigger' }).click({ timeout: 10000 });
      for (const item of path) {
        await page.getByText(item, { exact: true }).hover({ timeout: 5000 });
      }
      await page.getByRole('menuitem', { name: target }).waitFor({ timeout: 5000 });
      return;
    } catch (error) {
      if (attempt === 5) throw error;
    }
  }
}

// Collects every JSON chart-data response the page receives until the returned
// function is called (which returns them).
function collectChartData(page) {
  const chartData = [];
  const listener = async (response) => {
    if (sameOrigin(response.url()) && response.url().includes('/api/v1/chart/data')
        && response.request().method() === 'POST'
        && (response.request().headers()['content-type'] || '').startsWith('application/json')) {
      const text = await bodyOf(response);
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {
        // kept as null
      }
      chartData.push({
        status: response.status(),
        url: response.url(),
        request: response.request().postDataJSON(),
        json,
      });
    }
  };
  page.on('response', listener);
  return () => {
    page.off('response', listener);
    return chartData;
  };
}

// Clicks a menu item and returns the download it starts (CSV: a form post of
// `form_data=` into a new window, whose response is the file).
async function download(page, item) {
  const [file, response] = await Promise.all([
    page.waitForEvent('download', { timeout: TIMEOUT }),
    page.context().waitForEvent('response', {
      predicate: (candidate) => sameOrigin(candidate.url()) && candidate.url().includes('/api/v1/chart/data')
        && (candidate.request().headers()['content-type'] || '').startsWith('application/x-www-form-urlencoded'),
      timeout: TIMEOUT,
    }),
    page.getByRole('menuitem', { name: item }).click({ timeout: TIMEOUT }),
  ]);
  const path = await file.path();
  return {
    csv: path ? fs.readFileSync(path, 'utf8') : null,
    csv_status: response.status(),
    csv_request_content_type: response.request().headers()['content-type'],
    csv_request_body: response.request().postData(),
    filename: file.suggestedFilename(),
  };
}

// Opens `path` (Explore or a dashboard) and waits until its table chart has drawn rows
// from its first chart-data response and the page is idle.
async function openChartPage(page, path) {
  await Promise.all([
    nextJson(page, (response) => response.url().includes('/api/v1/chart/data')),
    page.goto(base + path, { timeout: TIMEOUT }),
  ]);
  await page.locator('.superset-chart-table tbody tr').first().waitFor({ timeout: TIMEOUT });
  await page.waitForLoadState('networkidle', { timeout: TIMEOUT });
}

async function explore(page, step) {
  const collected = collectChartData(page);
  await openChartPage(page, `/explore/?slice_id=${step.slice_id}`);
  const table = await readChartTable(page);

  // "..." → Data Export Options → Export All Data → Export to .CSV: a form post of
  // `form_data=` that the browser downloads.
  await openMenu(page, ['Data Export Options', 'Export All Data'], 'Export to .CSV');
  const csv = await download(page, 'Export to .CSV');
  const chartData = collected();

  // "..." → "View query": the SQL Superset would run (chart data, `result_type: query`).
  await openMenu(page, [], 'View query');
  const [viewQuery] = await Promise.all([
    nextJson(page, (response) => response.url().includes('/api/v1/chart/data')
      && response.request().postDataJSON()?.result_type === 'query'),
    page.getByRole('menuitem', { name: 'View query' }).click({ timeout: TIMEOUT }),
  ]);
  const viewQueryModal = page.locator('[data-test="View query-modal"]');
  await viewQueryModal.locator('.ant-modal-close').click({ timeout: TIMEOUT });
  await viewQueryModal.waitFor({ state: 'hidden', timeout: TIMEOUT });

  // Save → "Save as..." a new chart: a write Superset protects with its CSRF token.
  let saved = null;
  if (step.save_as) {
    await page.locator('[data-test="query-save-button"]').click({ timeout: TIMEOUT });
    await page.locator('[data-test="saveas-radio"]').click({ timeout: TIMEOUT });
    await page.locator('[data-test="new-chart-name"]').fill(step.save_as, { timeout: TIMEOUT });
    // Saving opens the new chart in Explore: wait for that page to load too, or the next
    // step's navigation aborts its requests.
    const [created] = await Promise.all([
      page.waitForResponse((response) => sameOrigin(response.url())
        && new URL(response.url()).pathname === '/api/v1/chart/'
        && response.request().method() === 'POST', { timeout: TIMEOUT }),
      page.waitForResponse((response) => sameOrigin(response.url())
        && new URL(response.url()).pathname === '/api/v1/explore/'
        && response.request().method() === 'GET', { timeout: TIMEOUT }),
      page.locator('[data-test="btn-modal-save"]').click({ timeout: TIMEOUT }),
    ]);
    saved = { status: created.status(), json: JSON.parse(await bodyOf(created)) };
    await page.locator('.superset-chart-table tbody tr').first().waitFor({ timeout: TIMEOUT });
    await page.waitForLoadState('networkidle', { timeout: TIMEOUT });
  }
  return { chart_data: chartData, table, view_query: viewQuery, saved, ...csv };
}

// A dashboard with a table chart: the chart as drawn, its "View as table" and its
// "Download → Export to .CSV" from the chart's menu.
async function dashboard(page, step) {
  const collected = collectChartData(page);
  await openChartPage(page, `/superset/dashboard/${step.dashboard_id}/`);
  const table = await readChartTable(page);
  const menu = page.locator('[data-test="slice-header"] .ant-dropdown-trigger').first();
  await menu.click({ timeout: TIMEOUT });
  const [viewAsTable] = await Promise.all([
    nextJson(page, (response) => response.url().includes('/api/v1/chart/data')),
    page.getByText('View as table', { exact: true }).click({ timeout: TIMEOUT }),
  ]);
  await page.keyboard.press('Escape');
  let csv = null;
  for (let attempt = 1; csv === null; attempt += 1) {
    try {
      await page.keyboard.press('Escape');
      await menu.click({ timeout: 10000 });
      await page.getByText('Download', { exact: true }).hover({ timeout: 5000 });
      await page.getByRole('menuitem', { name: 'Export to .CSV' }).waitFor({ timeout: 5000 });
      csv = await download(page, 'Export to .CSV');
    } catch (error) {
      if (attempt === 5) throw error;
    }
  }
  return { chart_data: collected(), table, view_as_table: viewAsTable, ...csv };
}

// Explore's data pane, "Samples" tab: the samples response the page received.
async function samples(page, step) {
  await openChartPage(page, `/explore/?slice_id=${step.slice_id}`);
  const [response] = await Promise.all([
    nextJson(page, (candidate) => candidate.url().includes('/datasource/samples')),
    page.getByRole('tab', { name: 'Samples' }).click({ timeout: TIMEOUT }),
  ]);
  await page.waitForLoadState('networkidle', { timeout: TIMEOUT });
  return { samples: response };
}

// A dashboard chart's "..." → "Drill to detail": the samples response the modal
// received (its query carries the chart's filters; the dashboard's id is in the URL),
// and the chart data the page received (the chart's, its native filter's values).
async function drill(page, step) {
  const collected = collectChartData(page);
  await openChartPage(page, `/superset/dashboard/${step.dashboard_id}/`);
  const menu = page.locator('[data-test="slice-header"] .ant-dropdown-trigger').first();
  await menu.click({ timeout: TIMEOUT });
  const [response] = await Promise.all([
    nextJson(page, (candidate) => candidate.url().includes('/datasource/samples')),
    page.getByText('Drill to detail', { exact: true }).first().click({ timeout: TIMEOUT }),
  ]);
  await page.waitForLoadState('networkidle', { timeout: TIMEOUT });
  await page.getByRole('dialog').getByRole('button', { name: 'Close', exact: true })
    .last().click({ timeout: TIMEOUT });
  // The native filter (the filter bar's select, the page's first combobox): choose
  // `step.filter_value` and apply it; the chart asks for its data again with the filter
  // in its query.
  await page.getByRole('combobox').first().click({ timeout: TIMEOUT });
  await page.keyboard.insertText(step.filter_value);
  await page.locator('.ant-select-item-option').filter({ hasText: step.filter_value }).first()
    .click({ timeout: TIMEOUT });
  await page.keyboard.press('Escape');
  const [filtered] = await Promise.all([
    page.waitForResponse((candidate) => sameOrigin(candidate.url())
      && candidate.url().includes('/api/v1/chart/data')
      && JSON.stringify(candidate.request().postDataJSON()?.queries?.[0]?.filters ?? []).includes(step.filter_value),
    { timeout: TIMEOUT }),
    page.locator('[data-test="filterbar-action-buttons"]').getByText('Apply filters', { exact: true })
      .click({ timeout: TIMEOUT }),
  ]);
  const filteredJson = JSON.parse(await bodyOf(filtered));
  // The dashboard then stores the filter state (a debounced PUT/POST of filter_state);
  // let it finish so the browser does not close on it.
  await page.waitForResponse((candidate) => candidate.url().includes('/filter_state'), { timeout: 10000 })
    .catch(() => {});
  await page.waitForLoadState('networkidle', { timeout: TIMEOUT });
  return {
    samples: response,
    chart_data: collected(),
    filter_applied: {
      status: filtered.status(),
      request: filtered.request().postDataJSON(),
      json: filteredJson,
    },
  };
}

async function navigate(page, step) {
  await page.setExtraHTTPHeaders({ 'X-Test-Marker': step.marker });
  let response;
  try {
    response = await page.goto(base + step.path, { timeout: TIMEOUT });
  } finally {
    await page.setExtraHTTPHeaders({});
  }
  return { status: response.status(), url: page.url(), body: (await bodyOf(response))?.slice(0, 2000) };
}

async function fetchFromPage(page, step) {
  // The same request a UI action sends: from the page, with its cookies, same-origin.
  return page.evaluate(async ({ method, path, marker, body }) => {
    const response = await fetch(path, {
      method,
      credentials: 'same-origin',
      headers: { 'X-Test-Marker': marker, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: response.status, body: (await response.text()).slice(0, 2000) };
  }, step);
}

const STEPS = { welcome, sqllab, explore, dashboard, samples, drill, navigate, fetch: fetchFromPage };

const browser = await chromium.launch({
  executablePath: spec.chromium || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
let failed = false;
// Set once the browser is being closed: what is still loading then is cancelled by it.
let closing = false;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, acceptDownloads: true });
  context.on('response', (response) => {
    recordResponse(response).catch(() => {});
  });
  // Chromium aborts (net::ERR_ABORTED) whatever a document still loads when the tab
  // moves to another document, and whatever is in flight when the browser closes. Each
  // failure says whether that happened while it was in flight, so the test can tell the
  // browser's own cancellations from a load that failed on its own.
  let page = null;
  let documents = 0;
  let currentStep = -1;
  const started = new WeakMap();
  // A navigation request of a window not yet created (a download's popup) has no frame
  // yet, and `frame()` throws there: it is not the tab's.
  const ofTheTab = (request) => {
    try {
      return request.frame() === page.mainFrame();
    } catch {
      return false;
    }
  };
  context.on('request', (request) => {
    if (page && request.isNavigationRequest() && ofTheTab(request)) documents += 1;
    started.set(request, { document: documents, step: currentStep });
  });
  context.on('requestfailed', (request) => {
    const start = started.get(request);
    report.failed.push({
      method: request.method(),
      url: request.url(),
      error: request.failure()?.errorText,
      step: start?.step ?? currentStep,
      navigated_away: start !== undefined && documents > start.document,
      in_flight_at_close: closing,
    });
  });
  page = await context.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') report.console_errors.push(message.text().slice(0, 500));
  });
  for (const [index, step] of spec.steps.entries()) {
    currentStep = index;
    const run = STEPS[step.do];
    if (!run) throw new Error(`unknown step ${step.do}`);
    try {
      report.steps.push({ do: step.do, ...(await run(page, step)) });
    } catch (error) {
      if (spec.screenshot) await page.screenshot({ path: spec.screenshot }).catch(() => {});
      throw new Error(`step ${step.do}: ${error.message}`);
    }
  }
  // Let the last responses' bodies be read.
  await new Promise((resolve) => setTimeout(resolve, 200));
} catch (error) {
  failed = true;
  report.error = String(error.message || error);
} finally {
  closing = true;
  await browser.close();
}
if (spec.report) {
  fs.writeFileSync(spec.report, JSON.stringify(report) + '\n');
  process.exit(failed ? 1 : 0);
} else {
  process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(failed ? 1 : 0));
}
