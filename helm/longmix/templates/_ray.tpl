{{/* Serve's config for one model version: infra/k8s.py's serve_config renders the same
document, byte for byte (a test compares them). */}}
{{- define "longmix.serveConfig" -}}
applications:
- name: longmix
  route_prefix: /
  import_path: workers.serve.app:build_app
  args:
    model: {{ .modelUri }}
    digest: {{ .modelDigest }}
{{- end -}}

{{/* The in-tree autoscaler sidecar, locked down like the Ray containers. */}}
{{- define "longmix.autoscalerOptions" -}}
resources:
  requests: {cpu: 100m, memory: 256Mi}
  limits: {cpu: 500m, memory: 512Mi}
securityContext:
  {{- include "longmix.containerSecurityContext" dict | nindent 2 }}
volumeMounts:
  {{- include "longmix.tmpMount" . | nindent 2 }}
{{- end -}}
