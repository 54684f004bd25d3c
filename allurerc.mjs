// Allure 3 config for harness/report/allure.py, which sets every path below; categories come from
// runtime/protocol.py's error kinds through a JSON file report.py writes, so none is spelled here.
import { readFileSync } from "node:fs";
// `allure` re-exports defineConfig, but importing it runs the whole CLI again: take it from its source.
import { defineConfig } from "@allurereport/plugin-api";

const need = (name) => {
  const value = process.env[name];
  if (!value) {
    throw new Error(`allurerc.mjs: ${name} is not set: build the report with harness/report/allure.py generate()`);
  }
  return value;
};

export default defineConfig({
  name: need("ALLURE_REPORT_NAME"),
  resultsDir: need("ALLURE_RESULTS_DIR"),
  output: need("ALLURE_OUTPUT_DIR"),
  historyPath: need("ALLURE_HISTORY_PATH"),
  // Each line holds every result of a run, and each report embeds them all: keep the trend, bound the size.
  historyLimit: 30,
  categories: JSON.parse(readFileSync(need("ALLURE_CATEGORIES_FILE"), "utf8")),
  plugins: {
    // One index.html with its data inline: the multi-file report shows only "Failed to fetch" from file://.
    awesome: { options: { singleFile: true, reportName: need("ALLURE_REPORT_NAME"), groupBy: ["parentSuite", "suite"] } },
  },
});
