// Lighthouse's accessibility category for one URL, in Debian's Chromium (headless), as JSON:
// {"score": 0..100, "failed": [{"id", "title"}...]}. Used by tests/channels/test_accessibility.py.
//   node tests/tools/lighthouse.mjs URL [--width 412 --height 823]
import * as chromeLauncher from "chrome-launcher";
import lighthouse from "lighthouse";

const args = process.argv.slice(2);
const url = args[0];
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 ? Number(args[at + 1]) : fallback;
};
const chrome = await chromeLauncher.launch({
  chromePath: process.env.CHROMIUM || "/usr/bin/chromium",
  chromeFlags: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const width = option("--width", 412), height = option("--height", 823);
  const result = await lighthouse(url, {
    port: chrome.port, output: "json", logLevel: "error", onlyCategories: ["accessibility"],
  }, {
    extends: "lighthouse:default",
    settings: {
      formFactor: width < 600 ? "mobile" : "desktop",
      screenEmulation: { mobile: width < 600, width, height, deviceScaleFactor: 1, disabled: false },
      throttlingMethod: "provided",
    },
  });
  const lhr = result.lhr;
  const failed = Object.values(lhr.audits)
    .filter((a) => a.scoreDisplayMode === "binary" && a.score === 0)
    .map((a) => ({ id: a.id, title: a.title }));
  const category = lhr.categories.accessibility;
  process.stdout.write(JSON.stringify({ score: Math.round(category.score * 100), failed,
    errors: lhr.runtimeError ? [lhr.runtimeError.message] : [] }) + "\n");
} finally {
  await chrome.kill();
}
