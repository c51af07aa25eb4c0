{{/*
Chart name, or nameOverride.
*/}}
{{- define "girder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: fullnameOverride, else the release name when it
already contains the chart name, else <release>-<chart>. At most 40 characters,
so "<fullname>-operator-metrics" stays a valid Service name (63).
*/}}
{{- define "girder.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Labels on every object. All stable: nothing here depends on time or chance,
so `helm template` renders the same bytes every time.
*/}}
{{- define "girder.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "girder.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels the Deployment selects its pods by (immutable once installed).
*/}}
{{- define "girder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "girder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "girder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "girder.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image, tag defaulting to appVersion.
*/}}
{{- define "girder.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's rules on namespaced objects: in its ClusterRole, or, with
watchNamespace set, in a Role in that namespace.
*/}}
{{- define "girder.namespacedRules" }}
  # Role and Workload controllers: watch the objects, write only status.
  - apiGroups: ["girder.dev"]
    resources: ["roles", "workloads"]
    verbs: ["list", "watch"]
  - apiGroups: ["girder.dev"]
    resources: ["roles/status", "workloads/status"]
    verbs: ["patch"]
  # The annealer (Workload controller): the NodeRoles it owns, and their
  # status. get and update of noderoles/status, and list of noderoles, are
  # also here because the agents' Roles grant them.
  - apiGroups: ["girder.dev"]
    resources: ["noderoles"]
    verbs: ["get", "list", "watch", "patch", "delete"]
  - apiGroups: ["girder.dev"]
    resources: ["noderoles/status"]
    verbs: ["get", "patch", "update"]
  # BareMetalNode controller: its finalizers (server-side apply of
  # metadata) and its status. girder pxe (same ServiceAccount, in the same
  # pod) creates a node for a machine it discovered. get, update and
  # baremetalnodes/status get are here because the agents' Roles grant them
  # (a Role can only grant what its author holds).
  - apiGroups: ["girder.dev"]
    resources: ["baremetalnodes"]
    verbs: ["get", "list", "watch", "patch", "create"]
  - apiGroups: ["girder.dev"]
    resources: ["baremetalnodes/status"]
    verbs: ["get", "patch", "update"]
  # Network and node-network controllers (IPAM): watch Networks and nodes,
  # write Network status (allocations) and node status (addresses,
  # NetworkReady) with the baremetalnodes/status verb above.
  # DNS registration: server-side apply of its annotation recording what it
  # published (girder.dev/dns-published), and its DNSRegistered condition.
  - apiGroups: ["girder.dev"]
    resources: ["networks"]
    verbs: ["list", "watch", "patch"]
  - apiGroups: ["girder.dev"]
    resources: ["networks/status"]
    verbs: ["patch"]
  # BMC credentials: read the Secret a node names; watch only Secrets'
  # metadata, so a changed Secret re-registers its nodes at once. Each
  # node's agent Secret (no data; the tokens of its agent session are bound
  # to it) is created and deleted to open and revoke a session. patch is
  # here because the agents' Roles grant it, by name, for the Secrets of
  # their sensitive outputs (girder-out-<binding>).
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch", "create", "delete", "patch"]
  # Each node's agent access (src/controller/node/access.rs): a
  # ServiceAccount, a Role naming exactly the objects the agent may touch,
  # its RoleBinding and the agent's heartbeat Lease, applied and, with the
  # node, deleted. The ValidatingAdmissionPolicies in agent_policy.yaml limit
  # what the tokens minted here may be.
  - apiGroups: [""]
    resources: ["serviceaccounts"]
    verbs: ["get", "create", "patch", "delete"]
  - apiGroups: [""]
    resources: ["serviceaccounts/token"]
    verbs: ["create"]
  - apiGroups: ["rbac.authorization.k8s.io"]
    resources: ["roles", "rolebindings"]
    verbs: ["get", "create", "patch", "delete"]
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
  # The shared event Recorder creates events and patches repeats.
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
{{- end }}
