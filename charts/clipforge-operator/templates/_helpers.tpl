{{- define "clipforge-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clipforge-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "clipforge-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clipforge-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clipforge-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "clipforge-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: clipforge
{{- end -}}

{{- define "clipforge-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "clipforge-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The job policy as the operator reads it (CLIPFORGE_JOB_POLICY): allowedImages always admits
pipelineImage.repository, the image of every job that names none.
*/}}
{{- define "clipforge-operator.jobPolicy" -}}
{{- $images := prepend .Values.jobPolicy.allowedImages .Values.pipelineImage.repository | uniq -}}
{{- merge (dict "allowedImages" $images) .Values.jobPolicy | toJson -}}
{{- end -}}

{{/* The namespace whose jobs the operator serves in namespace scope. */}}
{{- define "clipforge-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}

{{/*
The permissions the operator needs, the same in both scopes (only their binding differs).
Least privilege: no wildcards, no list/watch where a get suffices, no update where patch does.
*/}}
{{- define "clipforge-operator.rules" -}}
# VideoCurationJobs: watched; kopf patches its annotations and finalizer on the object.
- apiGroups: ["clipforge.dev"]
  resources: ["videocurationjobs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["clipforge.dev"]
  resources: ["videocurationjobs/status"]
  verbs: ["get", "patch"]
# Children carry blockOwnerDeletion owner references to their job.
- apiGroups: ["clipforge.dev"]
  resources: ["videocurationjobs/finalizers"]
  verbs: ["update"]
# One RayJob per attempt: created, watched for status, deleted on retry and job deletion;
# patched when a job's worker-group bounds change.
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The live RayCluster of a RayJob: only its worker-group bounds are patched; its status says how many
# workers are Ready (status.workerGroups), so no rule on pods: no pod spec, literal env included, is readable.
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "patch"]
# The job manifest the pipeline runs, mounted into the Ray head.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch", "delete"]
{{- $secrets := .Values.jobPolicy.allowedCredentialsSecrets }}
{{- if and .Values.rbac.readJobSecrets (has "*" $secrets) }}
# storage.credentialsSecret of a job, read to fetch its progress from S3. Any name: the explicit
# opt-in jobPolicy.allowedCredentialsSecrets ["*"].
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- else if and .Values.rbac.readJobSecrets $secrets }}
# storage.credentialsSecret of a job, read to fetch its progress from S3: only the names jobs may
# use (an empty resourceNames would mean every Secret, so no rule at all when there are none).
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson $secrets }}
  verbs: ["get"]
{{- end }}
# Each job's Ray token: created once under a generated name, which the operator learns from the
# create; it never reads one back (the job's pods get it by reference, the garbage collector
# deletes it with the job).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
# Each job's NetworkPolicy: created, read back only when the name is taken; deleted with the job
# by the garbage collector.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create"]
# Kubernetes Events on the jobs (phase changes, failures, retries).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Cluster scope only: kopf follows CRDs installed after it starts (such as KubeRay's). */}}
{{- define "clipforge-operator.crdRule" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}
