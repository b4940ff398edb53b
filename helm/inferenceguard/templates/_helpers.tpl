{{/*
Named templates of the chart. Per-role helpers take `(list $ $role)`: the root context and one
entry of the list that "ig.roles" returns.
*/}}

{{/* Chart name, possibly overridden. */}}
{{- define "ig.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: fullnameOverride, else the release name when it contains the
chart name, else `<release>-<chart>`. */}}
{{- define "ig.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* `helm.sh/chart` label value. */}}
{{- define "ig.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the release's pods (stable across upgrades). */}}
{{- define "ig.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ig.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource's metadata (never of a pod template: a chart upgrade must not
restart pods by itself). */}}
{{- define "ig.labels" -}}
helm.sh/chart: {{ include "ig.chart" . }}
{{ include "ig.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: inferenceguard
{{- end }}

{{/* Labels that select one role's pods. */}}
{{- define "ig.roleSelectorLabels" -}}
{{- $root := index . 0 }}{{ $role := index . 1 -}}
{{ include "ig.selectorLabels" $root }}
app.kubernetes.io/component: {{ $role.name }}
{{- end }}

{{/* Metadata labels of one role's resources. */}}
{{- define "ig.roleLabels" -}}
{{- $root := index . 0 }}{{ $role := index . 1 -}}
{{ include "ig.labels" $root }}
app.kubernetes.io/component: {{ $role.name }}
inferenceguard.dev/kind: {{ $role.kind }}
{{- with $role.scoreRole }}
inferenceguard.dev/score-role: {{ . }}
{{- end }}
{{- end }}

{{/* Name of a role's Deployment (and of the orchestrator's Service). */}}
{{- define "ig.roleFullname" -}}
{{- $root := index . 0 }}{{ $role := index . 1 -}}
{{- printf "%s-%s" (include "ig.fullname" $root) $role.name }}
{{- end }}

{{/* Name of a role's headless Service. */}}
{{- define "ig.headlessName" -}}
{{- printf "%s-headless" (include "ig.roleFullname" .) }}
{{- end }}

{{/* The gRPC port a role listens on: `ports.guard` for the orchestrator (the Guard API),
`ports.grpc` for the model roles. */}}
{{- define "ig.grpcPort" -}}
{{- $root := index . 0 }}{{ $role := index . 1 -}}
{{- if eq $role.kind "orchestrator" }}{{ $root.Values.ports.guard }}{{ else }}{{ $root.Values.ports.grpc }}{{ end }}
{{- end }}

{{/* The registry endpoint of a role: its headless Service, which resolves to the ready pods'
addresses. Each orchestrator replica keeps one HTTP/2 connection per endpoint, to one of them.
`https://` when `tls.enabled`: the role's server certificate must then carry this host name
(ig.dnsNames lists it). */}}
{{- define "ig.endpoint" -}}
{{- $root := index . 0 -}}
{{- printf "%s://%s:%s" ($root.Values.tls.enabled | ternary "https" "http") (include "ig.serviceFQDN" .) (include "ig.grpcPort" .) }}
{{- end }}

{{/* Name of the Service of a role: the headless one of a model role, the orchestrator's own. */}}
{{- define "ig.serviceName" -}}
{{- $role := index . 1 -}}
{{- if eq $role.kind "orchestrator" }}{{ include "ig.roleFullname" . }}{{ else }}{{ include "ig.headlessName" . }}{{ end }}
{{- end }}

{{/* Fully qualified DNS name of a role's Service: `<service>.<namespace>.svc.<clusterDomain>`. */}}
{{- define "ig.serviceFQDN" -}}
{{- $root := index . 0 -}}
{{- printf "%s.%s.svc.%s" (include "ig.serviceName" .) $root.Release.Namespace $root.Values.clusterDomain }}
{{- end }}

{{/* DNS names of a role's server certificate (YAML list): its Service's short,
namespace-qualified, `.svc` and fully qualified names (the registry dials the last), then the
role's own `tls.dnsNames` (e.g. the orchestrator's public name). */}}
{{- define "ig.dnsNames" -}}
{{- $root := index . 0 }}{{ $role := index . 1 -}}
{{- $svc := include "ig.serviceName" . }}
{{- $ns := $root.Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (include "ig.serviceFQDN" .) }}
{{- toYaml (concat $names (dig "dnsNames" (list) ($role.tls | default dict)) | uniq) }}
{{- end }}

{{/* The Secret holding a role's server certificate (`tls.crt`, `tls.key`, `ca.crt`): the role's
`tls.secretName`, else `<fullname>-<role>-tls`. */}}
{{- define "ig.tlsSecretName" -}}
{{- $role := index . 1 -}}
{{- dig "secretName" "" ($role.tls | default dict) | default (printf "%s-tls" (include "ig.roleFullname" .)) }}
{{- end }}

{{/* The Secret holding the orchestrator's client certificate and the CA of the roles'
certificates: `tls.clientSecretName`, else `<fullname>-<orchestrator>-client-tls`. */}}
{{- define "ig.clientTlsSecretName" -}}
{{- $root := index . 0 -}}
{{- $root.Values.tls.clientSecretName | default (printf "%s-client-tls" (include "ig.roleFullname" .)) }}
{{- end }}

{{/* Labels that select the orchestrator's pods of this release (by kind, whatever the role's
name): the only peers the model roles' gRPC port admits. */}}
{{- define "ig.orchestratorSelectorLabels" -}}
{{ include "ig.selectorLabels" . }}
inferenceguard.dev/kind: orchestrator
{{- end }}

{{- define "ig.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ig.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Deep merge of dict "dst" "src": src's keys win, maps merge key by key (false and 0 count,
unlike sprig's merge). Mutates dst. */}}
{{- define "ig.deepMerge" -}}
{{- $dst := .dst }}
{{- range $k, $v := .src }}
{{- if and (kindIs "map" $v) (kindIs "map" (index $dst $k)) }}
{{- include "ig.deepMerge" (dict "dst" (index $dst $k) "src" $v) }}
{{- else }}
{{- $_ := set $dst $k $v }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The enabled roles, `roles` then `extraRoles`, each with its `roleOverrides` entry merged in and
its `resources` over `defaultResources`, checked: returns YAML `{roles: [...]}` for
`fromYaml`. Fails on what the schema cannot see: an override naming no role, duplicate names, not exactly one policy, more
than one orchestrator, two defaults for one score role or critic objective, a critic without an
objective, a PVC model without a claim, a name that
would make a Service name longer than 63 characters, mTLS without TLS.
*/}}
{{- define "ig.roles" -}}
{{- $all := list }}
{{- $overrides := deepCopy (.Values.roleOverrides | default dict) }}
{{- range $r := concat (.Values.roles | default list) (.Values.extraRoles | default list) }}
{{- $r = deepCopy $r }}
{{- with $r.name }}
{{- if hasKey $overrides . }}
{{- include "ig.deepMerge" (dict "dst" $r "src" (index $overrides .)) }}
{{- $_ := unset $overrides . }}
{{- end }}
{{- end }}
{{- /* defaultResources under the role's own resources: every container requests CPU and memory
and has a memory limit, even a role that sets no resources. */}}
{{- $res := deepCopy ($.Values.defaultResources | default dict) }}
{{- include "ig.deepMerge" (dict "dst" $res "src" ($r.resources | default dict)) }}
{{- $_ := set $r "resources" $res }}
{{- $all = append $all $r }}
{{- end }}
{{- with $overrides }}
{{- fail (printf "roleOverrides: no role is named %s" (keys . | sortAlpha | join ", ")) }}
{{- end }}
{{- $fullname := include "ig.fullname" . }}
{{- $names := dict }}
{{- $kinds := dict "policy" 0 "scorer" 0 "critic" 0 "orchestrator" 0 }}
{{- $defaults := dict }}
{{- $out := list }}
{{- range $i, $r := $all }}
{{- $name := required (printf "roles[%d].name is required" $i) $r.name }}
{{- $kind := required (printf "roles %q: kind is required (policy|scorer|critic|orchestrator)" $name) $r.kind }}
{{- if hasKey $names $name }}
{{- fail (printf "roles: the name %q is used by two roles (roles and extraRoles together)" $name) }}
{{- end }}
{{- $_ := set $names $name true }}
{{- if not (hasKey $kinds $kind) }}
{{- fail (printf "roles %q: unknown kind %q (policy|scorer|critic|orchestrator)" $name $kind) }}
{{- end }}
{{- if gt (len (printf "%s-%s-headless" $fullname $name)) 63 }}
{{- fail (printf "roles %q: the Service name %s-%s-headless is over 63 characters; shorten the role name or set fullnameOverride" $name $fullname $name) }}
{{- end }}
{{- if or (not (hasKey $r "enabled")) $r.enabled }}
{{- $_ := set $kinds $kind (add1 (index $kinds $kind)) }}
{{- if eq $kind "scorer" }}
{{- $sr := required (printf "roles %q: scoreRole (cost|reward) is required for a scorer" $name) $r.scoreRole }}
{{- if $r.default }}
{{- if hasKey $defaults $sr }}
{{- fail (printf "roles %q: %q is already the default %s scorer; only one may set default: true" $name (index $defaults $sr) $sr) }}
{{- end }}
{{- $_ := set $defaults $sr $name }}
{{- end }}
{{- end }}
{{- if eq $kind "critic" }}
{{- $obj := required (printf "roles %q: objective (augmented|lagrangian|reward) is required for a critic" $name) $r.objective }}
{{- if $r.default }}
{{- $key := printf "critic/%s" $obj }}
{{- if hasKey $defaults $key }}
{{- fail (printf "roles %q: %q is already the default %s critic; only one per objective may set default: true" $name (index $defaults $key) $obj) }}
{{- end }}
{{- $_ := set $defaults $key $name }}
{{- end }}
{{- end }}
{{- if eq (dig "source" "none" ($r.model | default dict)) "pvc" }}
{{- $_ := required (printf "roles %q: model.claimName is required when model.source is pvc" $name) $r.model.claimName }}
{{- end }}
{{- $out = append $out $r }}
{{- end }}
{{- end }}
{{- if ne (index $kinds "policy") 1 }}
{{- fail (printf "roles: exactly one enabled role of kind policy is required, found %d" (index $kinds "policy")) }}
{{- end }}
{{- if gt (index $kinds "orchestrator") 1 }}
{{- fail (printf "roles: at most one enabled role of kind orchestrator is allowed, found %d" (index $kinds "orchestrator")) }}
{{- end }}
{{- if and (or .Values.tls.mtls .Values.tls.guardMtls) (not .Values.tls.enabled) }}
{{- fail "tls.mtls and tls.guardMtls need tls.enabled: client certificates are checked by a TLS server" }}
{{- end }}
{{- toYaml (dict "roles" $out) }}
{{- end }}

{{/* The orchestrator's registry file (TOML, the format ig-orchestrator reads), from the
enabled roles: one [[policy]], [[scorer]] or [[critic]] entry per role, named after it. Strings go
through toJson, whose escapes are valid in TOML basic strings. */}}
{{- define "ig.registry" -}}
{{- $roles := (include "ig.roles" . | fromYaml).roles -}}
# Rendered by the inferenceguard chart from its roles list. ig-orchestrator re-reads this file
# when it changes; requests name these models in policy_model, cost_model and reward_model.
{{- range $section := list "policy" "scorer" "critic" }}
{{- range $roles }}
{{- if eq .kind $section }}

[[{{ $section }}]]
name = {{ .name | toJson }}
{{- with .scoreRole }}
role = {{ . | toJson }}
{{- end }}
{{- if eq .kind "critic" }}
objective = {{ .objective | toJson }}
{{- end }}
{{- if .default }}
default = true
{{- end }}
{{- with .description }}
description = {{ . | toJson }}
{{- end }}
endpoints = [{{ include "ig.endpoint" (list $ .) | toJson }}]
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Image reference of a role: its own `image` fields over the chart's. */}}
{{- define "ig.image" -}}
{{- $root := index . 0 }}{{ $role := index . 1 -}}
{{- $img := $role.image | default dict }}
{{- $repo := $img.repository | default $root.Values.image.repository }}
{{- $tag := $img.tag | default $root.Values.image.tag | default $root.Chart.AppVersion | toString }}
{{- if hasPrefix "sha256:" $tag }}
{{- printf "%s@%s" $repo $tag }}
{{- else }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/* Image pull policy of a role. */}}
{{- define "ig.pullPolicy" -}}
{{- $root := index . 0 }}{{ $role := index . 1 -}}
{{- dig "pullPolicy" "" ($role.image | default dict) | default $root.Values.image.pullPolicy }}
{{- end }}

{{/* Container command of a role: its own, else the binary of its kind. */}}
{{- define "ig.command" -}}
{{- $role := index . 1 -}}
{{- $byKind := dict
  "policy" (list "ig-policy")
  "scorer" (list "ig-scorer")
  "critic" (list "ig-critic")
  "orchestrator" (list "ig-orchestrator") }}
{{- toYaml ($role.command | default (index $byKind $role.kind)) }}
{{- end }}

{{/* Where a role's model volume is mounted. */}}
{{- define "ig.modelMountPath" -}}
{{- $role := index . 1 -}}
{{- dig "mountPath" "/models" ($role.model | default dict) }}
{{- end }}

{{/* Model source of a role: none, assets or pvc. */}}
{{- define "ig.modelSource" -}}
{{- $role := index . 1 -}}
{{- dig "source" "none" ($role.model | default dict) }}
{{- end }}

{{/*
Environment of a role's main container: what the chart derives (listen addresses, telemetry,
model home, score role, registry path, TLS files, token file, reflection), then the chart-wide
`env`, then the role's `env`; a later one wins. Sorted by name so the output is stable. IG_THREADS follows the CPU request when
the role sets one and does not set IG_THREADS itself.
*/}}
{{- define "ig.env" -}}
{{- $root := index . 0 }}{{ $role := index . 1 -}}
{{- $env := dict
  "IG_LISTEN" (printf "0.0.0.0:%s" (include "ig.grpcPort" .))
  "IG_METRICS_LISTEN" (printf "0.0.0.0:%v" $root.Values.ports.metrics)
  "OTEL_SERVICE_NAME" (printf "inferenceguard-%s" $role.name) }}
{{- with $root.Values.otel.endpoint }}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" . }}
{{- end }}
{{- if ne (include "ig.modelSource" .) "none" }}
{{- $_ := set $env "INFERENCEGUARD_HOME" (include "ig.modelMountPath" .) }}
{{- end }}
{{- if eq $role.kind "scorer" }}
{{- $_ := set $env "IG_SCORE_ROLE" $role.scoreRole }}
{{- end }}
{{- if eq $role.kind "orchestrator" }}
{{- $_ := set $env "IG_REGISTRY" (printf "%s/registry.toml" $root.Values.registry.mountPath) }}
{{- $_ := set $env "IG_REFLECTION" ($root.Values.auth.reflection | toString) }}
{{- with $root.Values.ports.openai }}
{{- $_ := set $env "IG_HTTP_LISTEN" (printf "0.0.0.0:%v" .) }}
{{- end }}
{{- with $root.Values.auth.existingSecret }}
{{- $_ := set $env "IG_AUTH_TOKENS_FILE" (printf "%s/tokens.toml" $root.Values.auth.mountPath) }}
{{- end }}
{{- end }}
{{- with $root.Values.tls }}
{{- if .enabled }}
{{- $_ := set $env "IG_TLS_CERT" (printf "%s/tls.crt" .mountPath) }}
{{- $_ := set $env "IG_HEALTH_LISTEN" (printf "0.0.0.0:%v" $root.Values.ports.health) }}
{{- $_ := set $env "IG_TLS_KEY" (printf "%s/tls.key" .mountPath) }}
{{- if ternary .guardMtls .mtls (eq $role.kind "orchestrator") }}
{{- $_ := set $env "IG_TLS_CLIENT_CA" (printf "%s/ca.crt" .mountPath) }}
{{- end }}
{{- if eq $role.kind "orchestrator" }}
{{- $_ := set $env "IG_TLS_CA" (printf "%s/ca.crt" .clientMountPath) }}
{{- if .mtls }}
{{- $_ := set $env "IG_TLS_CLIENT_CERT" (printf "%s/tls.crt" .clientMountPath) }}
{{- $_ := set $env "IG_TLS_CLIENT_KEY" (printf "%s/tls.key" .clientMountPath) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k, $v := $root.Values.env }}{{ $_ := set $env $k $v }}{{ end }}
{{- range $k, $v := $role.env }}{{ $_ := set $env $k $v }}{{ end }}
{{- $list := list }}
{{- range $k := keys $env | sortAlpha }}
{{- $list = append $list (dict "name" $k "value" (index $env $k | toString)) }}
{{- end }}
{{- if and (ne $role.kind "orchestrator") (not (hasKey $env "IG_THREADS")) (dig "requests" "cpu" "" ($role.resources | default dict)) }}
{{- $list = append $list (dict "name" "IG_THREADS" "valueFrom" (dict "resourceFieldRef" (dict "resource" "requests.cpu" "divisor" "1"))) }}
{{- end }}
{{- toYaml (concat $list ($role.extraEnv | default list)) }}
{{- end }}

{{/* One probe of a role (`list $ $role "startup"`): a native gRPC health check on the role's
gRPC port, with the role's timings or else the chart's. It asks about the role's own service
(`inferenceguard.v1.PolicyService`, ...), which is NOT_SERVING until the model is loaded and
while draining; the whole server ("") is SERVING as soon as it listens. `service: ""` asks
about the whole server instead. With `tls.enabled` it checks `ports.health` instead, where
every role serves `grpc.health.v1` alone in plaintext (`IG_HEALTH_LISTEN`): the kubelet's
`grpc:` probe speaks plaintext HTTP/2 only (docs/deploy.md, "Probes under TLS"). */}}
{{- define "ig.probe" -}}
{{- $root := index . 0 }}{{ $role := index . 1 }}{{ $which := index . 2 -}}
{{- $p := dig $which (dict) ($role.probes | default dict) | default (index $root.Values.probes $which) | deepCopy }}
{{- $services := dict
  "policy" "inferenceguard.v1.PolicyService"
  "scorer" "inferenceguard.v1.ScorerService"
  "critic" "inferenceguard.v1.CriticService"
  "orchestrator" "inferenceguard.v1.GuardService" }}
{{- $service := hasKey $p "service" | ternary $p.service (index $services $role.kind) }}
{{- /* Under TLS the kubelet's grpc probe (plaintext only) checks the plaintext health port. */}}
{{- $port := ternary $root.Values.ports.health (include "ig.grpcPort" (list $root $role)) $root.Values.tls.enabled | int }}
{{- $_ := unset $p "service" }}
{{- $grpc := dict "port" $port }}
{{- with $service }}{{ $_ := set $grpc "service" . }}{{ end }}
{{- toYaml (merge (dict "grpc" $grpc) $p) }}
{{- end }}
