// realm-web/node: the in-process model for Node.js (kept for the older import path; the package's
// main entry "realm-web" exports the same).
export { Realm, RealmEngineError, defaultModelDir, realmHome, DEFAULT_MODEL } from "./realm.mjs";
export { RealmError } from "./client.mjs";
