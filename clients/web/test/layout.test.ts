// The store layout and the change application, without a server.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { create, fromJson } from "@bufbuild/protobuf";
import { ValueSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ChangeKind, ChangeSchema } from "../src/gen/userdata/v1/change_service_pb.js";
import { OnboardingStatusSchema, OnboardingStep } from "../src/gen/userdata/v1/user_data_pb.js";
import { jsonEqual, onboardingFromJson, onboardingFromProto, preferencesFromJson, stepToProto, themeToProto } from "../src/layout.js";
import { applyToState } from "../src/persister.js";
import { emptyState, flattenState } from "../src/state.js";
import { readSessionClaims } from "../src/token.js";

function change(kind: ChangeKind, key: string, after?: unknown) {
  return create(ChangeSchema, {
    kind,
    key,
    cursor: "c1",
    ...(after === undefined ? {} : { after: fromJson(ValueSchema, after as never) }),
  });
}

describe("layout", () => {
  test("stored onboarding JSON and the typed message give the same store form", () => {
    const started = new Date("2026-11-30T10:00:00.123456Z");
    const fromJsonForm = onboardingFromJson({ step: "profile", completed: false, started_at: "2026-11-30T10:00:00.123456Z" });
    const fromProto = onboardingFromProto(create(OnboardingStatusSchema, { step: OnboardingStep.PROFILE, startedAt: timestampFromDate(started) }));
    assert.deepEqual(fromJsonForm, fromProto);
  });

  test("stored preferences fill missing fields with the documented defaults", () => {
    assert.deepEqual(preferencesFromJson({ theme: "dark" }), { theme: "dark", notifications: true, language: "en", timezone: "UTC" });
    assert.deepEqual(preferencesFromJson(undefined), { theme: "system", notifications: true, language: "en", timezone: "UTC" });
  });

  test("names map to proto enums and unknown names to undefined", () => {
    assert.equal(themeToProto("dark"), 2);
    assert.equal(themeToProto("purple"), undefined);
    assert.equal(stepToProto("complete"), OnboardingStep.COMPLETE);
    assert.equal(stepToProto("done"), undefined);
  });

  test("jsonEqual ignores key order and compares deeply", () => {
    assert.ok(jsonEqual({ a: [1, { b: 2 }], c: null }, { c: null, a: [1, { b: 2 }] }));
    assert.ok(!jsonEqual({ a: [1, 2] }, { a: [2, 1] }));
    assert.ok(!jsonEqual({ a: 1 }, { a: 1, b: undefined }));
  });
});

describe("applying changes", () => {
  test("a data change replaces the key's value and forgets its etag", () => {
    const state = emptyState();
    state.preferencesEtag = "e1";
    applyToState(state, change(ChangeKind.DATA_SET, "preferences", { theme: "light", notifications: false, language: "de", timezone: "UTC" }));
    assert.deepEqual(state.preferences, { theme: "light", notifications: false, language: "de", timezone: "UTC" });
    assert.equal(state.preferencesEtag, undefined);
  });

  test("a change equal to what is held keeps the etag (the echo of this client's write)", () => {
    const state = emptyState();
    state.flags = { beta: true };
    state.flagsEtag = "e2";
    applyToState(state, change(ChangeKind.DATA_SET, "feature_flags", { beta: true }));
    assert.equal(state.flagsEtag, "e2");
  });

  test("custom keys are set and deleted; other keys are ignored", () => {
    const state = emptyState();
    applyToState(state, change(ChangeKind.DATA_SET, "custom.colour", { rgb: [1, 2, 3] }));
    applyToState(state, change(ChangeKind.DATA_SET, "session_count", 4));
    assert.deepEqual([...state.custom.keys()], ["colour"]);
    applyToState(state, change(ChangeKind.DATA_DELETED, "custom.colour"));
    assert.equal(state.custom.size, 0);
    assert.deepEqual(flattenState(state), flattenState(emptyState()));
  });

  test("a user change sets the profile; an erased one does not", () => {
    const state = emptyState();
    applyToState(state, change(ChangeKind.USER_UPDATED, "", { clerk_id: "user_1", email: "a@example.org", first_name: "Ada", last_name: null }));
    assert.deepEqual(state.profile, { email: "a@example.org", firstName: "Ada", lastName: undefined, username: undefined, imageUrl: undefined });
    const erased = change(ChangeKind.USER_UPDATED, "");
    erased.erased = true;
    applyToState(state, erased);
    assert.equal(state.profile.firstName, "Ada");
  });

  test("deleting the user clears the layout", () => {
    const state = emptyState();
    state.flags = { beta: true };
    state.custom.set("x", { value: 1, etag: "e" });
    applyToState(state, change(ChangeKind.USER_DELETED, ""));
    assert.deepEqual(flattenState(state), flattenState(emptyState()));
  });
});

describe("session token", () => {
  const encode = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");

  test("sub and exp are read from the payload", () => {
    const token = `${encode({ alg: "RS256" })}.${encode({ sub: "user_2abc", exp: 1_900_000_000 })}.sig`;
    assert.deepEqual(readSessionClaims(token), { sub: "user_2abc", exp: 1_900_000_000 });
  });

  test("a token without sub is refused with a message naming the claim", () => {
    const token = `${encode({ alg: "RS256" })}.${encode({ exp: 1 })}.sig`;
    assert.throws(() => readSessionClaims(token), /`sub`/);
    assert.throws(() => readSessionClaims("not-a-jwt"), /three dot-separated parts/);
  });
});
