#!/usr/bin/env node
// Runs the web example in headless Chromium (playwright-core driving the system's chromium): serves
// BUNDLE and IMAGE, segments IMAGE with PROMPT in the page, prints the page's result as JSON and
// saves a screenshot. Exit code 2 with one line when the page reports an error.
//   node examples/web/headless.mjs BUNDLE IMAGE PROMPT SCREENSHOT.png [QUERY]   (QUERY: e.g. threshold=0&maxObjects=3)
import { chromium } from "playwright-core";
import { serve } from "./serve.mjs";

const [bundle, image, prompt, screenshot, query] = process.argv.slice(2);
if (!screenshot) {
  console.error("usage: headless.mjs BUNDLE IMAGE PROMPT SCREENSHOT.png");
  process.exit(2);
}
const server = await serve(bundle, image);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
                                        args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 760, height: 560 } });
  page.on("console", (message) => message.type() === "error" && console.error(`page: ${message.text()}`));
  await page.goto(`${server.url}/examples/web/index.html?image=/image&prompt=${encodeURIComponent(prompt)}` +
                  (query ? `&${query}` : ""));
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null,
                             { timeout: 15 * 60 * 1000, polling: 500 });
  await page.screenshot({ path: screenshot, fullPage: true });
  const [result, error, isolated] = await page.evaluate(() => [window.esam3Result, window.esam3Error, crossOriginIsolated]);
  if (error) {
    console.error(`headless.mjs: error: the page says: ${error}`);
    process.exitCode = 2;
  } else console.log(JSON.stringify({ ...result, crossOriginIsolated: isolated, browser: browser.version() }));
} finally {
  await browser.close();
  server.close();
}
