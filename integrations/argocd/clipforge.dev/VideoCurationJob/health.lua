-- Argo CD's health of a ClipForge VideoCurationJob, from the phase the operator reports.
-- Install: argocd-cm's resource.customizations.health.clipforge.dev_VideoCurationJob (README).
-- Its cases: health_test.yaml (Argo CD's resource_customizations layout), run by the test suite.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the ClipForge operator"
  return hs
end

local states = {
  Pending = "Progressing",
  Provisioning = "Progressing",
  Running = "Progressing",
  Succeeded = "Healthy",
  Failed = "Degraded",
  -- Cancelled by its owner: stopped on purpose, not broken.
  Cancelled = "Suspended",
}
hs.status = states[status.phase] or "Unknown"

local said = status.phase
if status.reason ~= nil and status.reason ~= "" and status.reason ~= status.phase then
  said = said .. " (" .. status.reason .. ")"
end
if status.message ~= nil and status.message ~= "" then
  said = said .. ": " .. status.message
end
if status.phase == "Running" and status.progress ~= nil and status.progress.videosTotal ~= nil then
  said = said .. " [" .. (status.progress.videosDone or 0) .. "/" .. status.progress.videosTotal .. " videos]"
end
hs.message = said
return hs
