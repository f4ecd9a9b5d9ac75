// Screenshots of the demo page for the README (examples/web/screenshots/):
// a user with some state, in the light and dark themes, and a refused edit.
// Run: `cd examples/web && npm run screenshots`.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { REPO_ROOT } from "../../../clients/web/dev/user-service.js";
import { createUser, startStack } from "../test/support.js";

const out = join(REPO_ROOT, "examples", "web", "screenshots");
mkdirSync(out, { recursive: true });
const stack = await startStack();
try {
  const clerkId = "user_2demoAdaLovelace";
  await createUser(stack.service, clerkId);
  const admin = stack.service.clients();
  await admin.users.updateUser({ user: { clerkId, email: "ada@example.org", firstName: "Ada", lastName: "Lovelace" }, updateMask: { paths: ["email", "first_name", "last_name"] } });
  await admin.data.updatePreferences({ clerkId, preferences: { theme: 1, language: "en", timezone: "Europe/London" }, updateMask: { paths: ["theme", "language", "timezone"] } });
  await admin.data.advanceOnboarding({ clerkId, step: 2 });
  await admin.data.updateFeatureFlags({ clerkId, set: { beta_dashboard: true, new_checkout: false, analytical_engine: true } });
  await admin.data.setUserData({ clerkId, key: "custom.note", value: fromJson(ValueSchema, "Notes on the Analytical Engine") });

  const page = await stack.open(clerkId);
  await page.setViewportSize({ width: 1100, height: 720 });
  await page.screenshot({ path: join(out, "demo-light.png") });

  await page.locator('input[name="theme"][value="dark"]').check();
  await page.locator('body[data-theme="dark"]').waitFor();
  await page.getByTestId("timezone").fill("Mars/Olympus_Mons");
  await page.getByTestId("timezone-save").click();
  await page.getByTestId("error").waitFor();
  await page.screenshot({ path: join(out, "demo-dark-refused.png") });
  console.log(`screenshots in ${out}`);
} finally {
  await stack.close();
}
