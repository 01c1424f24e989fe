#!/usr/bin/env bash
# Runs `loa keys …` inside AWS staging, as a one-off ECS task of the loa image (task definition <prefix>-keys-<service>,
# which holds that service's connection string and keyring master key; deploy/terraform/ecs.tf), waits for it, prints
# its output from CloudWatch Logs and exits with its exit code. Use it wherever scripts/loa.sh runs `loa keys`:
#
#   LOA=scripts/loa-ecs.sh scripts/revoke-staging-key.sh --service freeside --kid KID
#   scripts/loa-ecs.sh keys list --service freeside
#
# Only `keys` commands run this way (the keyring is what a laptop cannot reach), and `keys import` needs a PEM file
# inside the task, so import from a machine in the VPC instead. Needs aws, jq and the Terraform outputs
# (private_subnets, services_security_group) of TF_DIR [deploy/terraform].
# Env: PREFIX [arrakis-staging]  CLUSTER [$PREFIX]  AWS_REGION  TF_DIR
# Usage: scripts/loa-ecs.sh keys list|rotate|revoke … --service freeside|finn
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;; esac
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${PREFIX:-arrakis-staging}"
CLUSTER="${CLUSTER:-$PREFIX}"
TF_DIR="${TF_DIR:-$ROOT/deploy/terraform}"

if [[ "${1:-}" != "keys" ]]; then
  echo "loa-ecs.sh runs only 'loa keys …' in the cluster (got: ${1:-nothing}); run other commands with scripts/loa.sh" >&2
  exit 2
fi
service=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  # loa takes an option's value as the next argument, or after '=' or ':' (--service=finn).
  case "${args[$i]}" in
    --) break ;;  # what follows is a kid, not an option
    --service) (( i + 1 < ${#args[@]} )) && service="${args[$((i + 1))]}" ;;
    --service=*|--service:*) service="${args[$i]:10}" ;;
    --data-dir|--data-dir[=:]*|--pem|--pem[=:]*)
      echo "loa-ecs.sh: ${args[$i]%%[=:]*} names a local file, which the task cannot see" >&2
      exit 2 ;;
  esac
done
service="${service,,}"  # loa reads the service name in any case; the task definitions are lower case
case "$service" in
  freeside|finn) ;;
  *) echo "loa-ecs.sh: pass --service freeside or --service finn (the services with a keyring)" >&2; exit 2 ;;
esac

subnets="$(terraform -chdir="$TF_DIR" output -json private_subnets | jq -r 'join(",")')"
security_group="$(terraform -chdir="$TF_DIR" output -raw services_security_group)"
# One argument per line into a JSON array (jq's --args would read "--service" as its own option).
overrides="$(printf '%s\n' "$@" | jq -R . | jq -cs '{containerOverrides: [{name: "loa", command: .}]}')"
run_task="$(aws ecs run-task --cluster "$CLUSTER" --launch-type FARGATE --task-definition "$PREFIX-keys-$service" \
  --network-configuration "awsvpcConfiguration={subnets=[$subnets],securityGroups=[$security_group],assignPublicIp=DISABLED}" \
  --overrides "$overrides" --output json)"
task_arn="$(jq -r '.tasks[0].taskArn // empty' <<<"$run_task" 2>/dev/null || true)"
if [[ -z "$task_arn" ]]; then
  # ECS could not place the task (RESOURCE:MEMORY, no free address in the subnets, …): run-task says why in failures[],
  # as "reason: detail (arn)".
  failures="$(jq -r '[.failures[]? | (.reason // "no reason") + (if .detail then ": " + .detail else "" end) + (if .arn then " (" + .arn + ")" else "" end)] | join("; ")' <<<"$run_task" 2>/dev/null || true)"
  echo "loa-ecs.sh: the task did not start: ${failures:-run-task gave no reason}" >&2
  exit 1
fi
if ! aws ecs wait tasks-stopped --cluster "$CLUSTER" --tasks "$task_arn"; then
  # The waiter gives up after 10 minutes (exit 255) with its own message, which names no task.
  echo "loa-ecs.sh: the task $task_arn had not stopped when aws ecs wait gave up; it may still be running." \
    "Check it with: aws ecs describe-tasks --cluster $CLUSTER --tasks $task_arn" >&2
  exit 1
fi
exit_code="$(aws ecs describe-tasks --cluster "$CLUSTER" --tasks "$task_arn" --query 'tasks[0].containers[0].exitCode' --output text)"
if ! [[ "$exit_code" =~ ^[0-9]+$ ]]; then
  # The container never ran (an image it could not pull, a secret it could not read): no log stream, but a reason.
  reason="$(aws ecs describe-tasks --cluster "$CLUSTER" --tasks "$task_arn" --query 'tasks[0].stoppedReason' --output text || true)"
  echo "loa-ecs.sh: the task stopped without running loa: ${reason:-no reason given}" >&2
  exit 1
fi
# awslogs streams are <stream prefix>/<container>/<task id>.
aws logs get-log-events --log-group-name "/ecs/$PREFIX/$service" --log-stream-name "keys/loa/${task_arn##*/}" \
  --start-from-head --query 'events[].message' --output text | tr '\t' '\n' || echo "loa-ecs.sh: could not read the task's log" >&2
exit "$exit_code"
