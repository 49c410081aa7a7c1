// A second, independent client: the JavaScript agent (@icp-sdk/core) calls the counter's
// update `inc` and query `read` against `serve`, with certificates and query signatures
// verified against the root key `serve` printed, then a method the canister does not have,
// whose reject it checks by its fields (the agent's CertifiedRejectErrorCode.toString()
// crashes on a polled reject, so the message is not printed through it).
//
// Usage: node agent.mjs URL ROOT_KEY_HEX CANISTER_ID   (run by tests/e2e/icp.sh)
import { Actor, HttpAgent } from '@icp-sdk/core/agent';
import { Ed25519KeyIdentity } from '@icp-sdk/core/identity';

const [url, rootKeyHex, canisterId] = process.argv.slice(2);
if (!canisterId) {
  console.error('usage: node agent.mjs URL ROOT_KEY_HEX CANISTER_ID');
  process.exit(2);
}
const fail = (message) => {
  console.error(`agent.mjs: ${message}`);
  process.exit(1);
};

const rootKey = Uint8Array.from(Buffer.from(rootKeyHex, 'hex'));
const identity = Ed25519KeyIdentity.generate(new Uint8Array(32).fill(7));
const agent = await HttpAgent.create({
  host: url,
  rootKey,
  identity,
  verifyQuerySignatures: true,
});
const idlFactory = ({ IDL }) =>
  IDL.Service({
    inc: IDL.Func([], [IDL.Nat], []),
    read: IDL.Func([], [IDL.Nat], ['query']),
    // Not exported by the canister: the call must be rejected.
    missing: IDL.Func([], [], []),
  });
const counter = Actor.createActor(idlFactory, { agent, canisterId });

const before = await counter.read();
const incremented = await counter.inc();
if (incremented !== before + 1n) fail(`inc replied ${incremented}, expected ${before + 1n}`);
const after = await counter.read();
if (after !== incremented) fail(`read replied ${after} after inc replied ${incremented}`);

let rejected = null;
try {
  await counter.missing();
} catch (err) {
  rejected = err;
}
if (rejected === null) fail('a call to a method the canister lacks was not rejected');
const code = rejected.cause?.code;
if (!code || code.rejectCode === undefined) {
  fail(`the reject carries no reject code (${rejected.name})`);
}
if (code.rejectCode !== 5) fail(`reject code ${code.rejectCode}, expected 5 (canister error)`);
console.log(
  `agent.mjs: read ${before}, inc ${incremented}, read ${after}; missing rejected ` +
    `(${code.name}, reject code ${code.rejectCode}, ${code.rejectErrorCode})`,
);
