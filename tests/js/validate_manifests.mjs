// Validates Kubernetes manifests (multi-document YAML on stdin, e.g. `kubectl kustomize`)
// against the Kubernetes API schemas and the KEDA, Prometheus operator and Strimzi CRD
// schemas, as packaged by kubernetes-models. Prints one line per document; exit 1 if any
// document is invalid or of a kind it has no schema for. With --to-json: print them as JSON.
import { parseAllDocuments } from "yaml";

const MODELS = {
  "v1/Namespace": "kubernetes-models/v1/Namespace",
  "v1/ConfigMap": "kubernetes-models/v1/ConfigMap",
  "v1/Service": "kubernetes-models/v1/Service",
  "v1/Secret": "kubernetes-models/v1/Secret",
  "apps/v1/StatefulSet": "kubernetes-models/apps/v1/StatefulSet",
  "apps/v1/Deployment": "kubernetes-models/apps/v1/Deployment",
  "policy/v1/PodDisruptionBudget": "kubernetes-models/policy/v1/PodDisruptionBudget",
  "networking.k8s.io/v1/NetworkPolicy": "kubernetes-models/networking.k8s.io/v1/NetworkPolicy",
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject",
  "monitoring.coreos.com/v1/PodMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor",
  "monitoring.coreos.com/v1/PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule",
  "kafka.strimzi.io/v1/KafkaTopic": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1/KafkaTopic",
  "kafka.strimzi.io/v1/KafkaUser": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1/KafkaUser",
  // Strimzi 0.4x-0.51 (deploy.k8s.generate --strimzi-api-version v1beta2)
  "kafka.strimzi.io/v1beta2/KafkaTopic": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2/KafkaTopic",
  "kafka.strimzi.io/v1beta2/KafkaUser": "@kubernetes-models/strimzi-kafka-operator/kafka.strimzi.io/v1beta2/KafkaUser",
};

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const docs = parseAllDocuments(Buffer.concat(chunks).toString("utf8"));
if (process.argv[2] === "--to-json") {  // the documents as one JSON array, for the Python checks
  console.log(JSON.stringify(docs.map((d) => d.toJS()).filter(Boolean)));
  process.exit(0);
}
let bad = 0;
for (const doc of docs) {
  if (doc.errors.length) { console.log(`INVALID yaml: ${doc.errors[0].message}`); bad++; continue; }
  const obj = doc.toJS();
  if (!obj) continue;
  const key = `${obj.apiVersion}/${obj.kind}`;
  const name = `${key} ${obj.metadata?.name}`;
  const path = MODELS[key];
  if (!path) { console.log(`INVALID ${name}: no schema for this kind`); bad++; continue; }
  const mod = await import(path);
  const Model = mod[obj.kind];
  try {
    new Model(obj).validate();
    console.log(`valid ${name}`);
  } catch (e) {
    console.log(`INVALID ${name}: ${String(e.message).split("\n").slice(0, 3).join(" | ")}`);
    bad++;
  }
}
process.exit(bad ? 1 : 0);
