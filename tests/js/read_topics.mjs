// Reads slipguard's subscriber-facing topics as a Node service would: kafkajs with its
// defaults (read_committed), and validates every record against the committed JSON
// Schemas with Ajv (JSON Schema 2020-12, strict mode, formats checked).
//
// Usage: node read_topics.mjs '{"brokers": ["127.0.0.1:9092"], "timeoutMs": 60000,
//          "topics": {"orders.recovery": {"schema": "schemas/json/recovery.schema.json", "expect": 10}}}'
// Prints one JSON line: {"topics": {name: {"records": n, "invalid": [first errors]}}, "crash": null | message}
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { Kafka, logLevel } from "kafkajs";

const args = JSON.parse(process.argv[2]);
const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats(ajv);
const topics = Object.keys(args.topics);
const validate = Object.fromEntries(topics.map((t) => [t, ajv.compile(JSON.parse(readFileSync(args.topics[t].schema, "utf8")))]));
const out = { topics: Object.fromEntries(topics.map((t) => [t, { records: 0, invalid: [] }])), crash: null };

const kafka = new Kafka({ clientId: "slipguard-js-check", brokers: args.brokers, logLevel: logLevel.NOTHING });
const consumer = kafka.consumer({ groupId: `slipguard-js-check-${process.pid}-${Date.now()}` });
let finish;
const finished = new Promise((resolve) => { finish = resolve; });
const allSeen = () => topics.every((t) => out.topics[t].records >= args.topics[t].expect);

consumer.on(consumer.events.CRASH, (event) => { out.crash = String(event.payload.error); finish(); });
await consumer.connect();
await consumer.subscribe({ topics, fromBeginning: true });
await consumer.run({
  eachMessage: async ({ topic, message }) => {
    const seen = out.topics[topic];
    seen.records += 1;
    let value;
    try {
      value = JSON.parse(message.value.toString("utf8"));
    } catch (err) {
      if (seen.invalid.length < 5) seen.invalid.push(`offset ${message.offset}: not JSON (${err.message})`);
      return;
    }
    if (!validate[topic](value) && seen.invalid.length < 5) {
      seen.invalid.push(`offset ${message.offset}: ${ajv.errorsText(validate[topic].errors)}`);
    }
    if (allSeen()) finish();
  },
});
if (allSeen()) finish();
const timer = setTimeout(finish, args.timeoutMs ?? 60000);
await finished;
clearTimeout(timer);
await consumer.disconnect().catch(() => {});
process.stdout.write(JSON.stringify(out) + "\n");
