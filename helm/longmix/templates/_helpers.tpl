{{/* Names, labels and the pieces every longmix pod shares. */}}

{{- define "longmix.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "mlflow") */}}
{{- define "longmix.labels" -}}
{{ include "longmix.selectorLabels" . }}
app.kubernetes.io/part-of: longmix
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "longmix.selectorLabels" -}}
app.kubernetes.io/name: longmix
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "longmix.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The Ray cluster for data and training, and its head Service (KubeRay names it). */}}
{{- define "longmix.rayClusterName" -}}
{{ include "longmix.name" . }}-ray
{{- end -}}

{{/* Non-root, no privilege escalation, no capabilities, the runtime's seccomp profile. */}}
{{- define "longmix.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid | default 1000 }}
runAsGroup: {{ .uid | default 1000 }}
fsGroup: {{ .uid | default 1000 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "longmix.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Writable scratch under a read-only root filesystem. */}}
{{- define "longmix.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "longmix.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Volumes of a longmix container (flows, Ray pods): scratch and the serving API keys. */}}
{{- define "longmix.volumes" -}}
{{ include "longmix.tmpVolume" . }}
- name: serve-keys
  secret:
    secretName: {{ .Values.secrets.serveApiKeys }}
    optional: true
{{- end -}}

{{- define "longmix.volumeMounts" -}}
{{ include "longmix.tmpMount" . }}
- name: serve-keys
  mountPath: /etc/longmix/serve-keys
  readOnly: true
{{- end -}}

{{/* S3 endpoint and credentials, as every S3 client (boto3, pyarrow, MLflow) reads them. */}}
{{- define "longmix.s3Env" -}}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.storage.region | quote }}
{{- with .Values.storage.s3Endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.secrets.s3 }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ . }}, key: AWS_SECRET_ACCESS_KEY}
{{- end }}
{{- end -}}

{{/* longmix's settings (infra/settings.py) for flows and Ray pods: the cluster's MLflow, S3,
the RayService the deployer manages; secrets only through secretKeyRef. (dict "root" $
"mlflowAccount" "pipeline"|"ray"|"serving"): the component's own MLflow account, its password
the one key of the accounts Secret this pod gets. */}}
{{- define "longmix.env" -}}
{{- $account := .mlflowAccount -}}
{{- with .root -}}
- name: HOME
  value: /tmp
- name: LONGMIX_HOME
  value: /tmp/longmix
- name: LONGMIX_STORAGE_URI
  value: {{ .Values.storage.uri | quote }}
- name: LONGMIX_MLFLOW_TRACKING_URI
  value: http://{{ include "longmix.name" . }}-mlflow:5000
- name: MLFLOW_TRACKING_USERNAME
  value: {{ get .Values.mlflow.accounts $account | quote }}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.mlflowAccounts }}, key: {{ $account }}}
- name: LONGMIX_SERVE_API_KEY_FILE
  value: /etc/longmix/serve-keys/keys
- name: LONGMIX_DEPLOY_TARGET
  value: rayservice
- name: LONGMIX_K8S_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: LONGMIX_K8S_RAYSERVICE
  value: {{ .Values.serving.rayServiceName | quote }}
- name: LONGMIX_K8S_SERVE_URL
  value: http://{{ .Values.serving.rayServiceName }}-serve-svc.{{ .Release.Namespace }}.svc:8000
- name: RAY_AUTH_MODE
  value: disabled
{{ include "longmix.s3Env" . }}
{{- range $name, $value := .Values.settings }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* One Ray pod template: (dict "root" $ "role" "head"|"worker" "group" <values> "component"
"ray"|"serving" "mlflowAccount" "ray"|"serving"). Ray writes under /tmp (emptyDir) and needs
shared memory (/dev/shm, memory-backed emptyDir). */}}
{{- define "longmix.rayPodTemplate" -}}
{{- $root := .root -}}
metadata:
  labels:
    {{- include "longmix.labels" (dict "root" $root "component" .component) | nindent 4 }}
spec:
  serviceAccountName: {{ include "longmix.name" $root }}-ray
  automountServiceAccountToken: false
  securityContext:
    {{- include "longmix.podSecurityContext" dict | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with .group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-{{ .role }}
      image: {{ include "longmix.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      env:
        {{- include "longmix.env" (dict "root" $root "mlflowAccount" .mlflowAccount) | nindent 8 }}
        - name: LONGMIX_RAY_ADDRESS
          value: auto
      {{- if eq .role "head" }}
      ports:
        - {containerPort: 6379, name: gcs-server}
        - {containerPort: 8265, name: dashboard}
        - {containerPort: 10001, name: client}
        {{- if .serve }}
        - {containerPort: 8000, name: serve}
        {{- end }}
      {{- end }}
      resources:
        requests:
          {{- toYaml .group.resources.requests | nindent 10 }}
          {{- with .accelerator }}
          {{ .name }}: {{ .count }}
          {{- end }}
        limits:
          {{- toYaml .group.resources.limits | nindent 10 }}
          {{- with .accelerator }}
          {{ .name }}: {{ .count }}
          {{- end }}
      securityContext:
        {{- include "longmix.containerSecurityContext" dict | nindent 8 }}
      volumeMounts:
        {{- include "longmix.volumeMounts" $root | nindent 8 }}
        - name: dshm
          mountPath: /dev/shm
  volumes:
    {{- include "longmix.volumes" $root | nindent 4 }}
    - name: dshm
      emptyDir:
        medium: Memory
{{- end -}}

{{/* The Prefect API's basic auth from its Secret: the server requires it (name
PREFECT_SERVER_API_AUTH_STRING), its clients send it (PREFECT_API_AUTH_STRING). */}}
{{- define "longmix.prefectAuthEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ .root.Values.secrets.prefectAuth }}, key: auth-string}
{{- end -}}
