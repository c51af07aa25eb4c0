-- Argo CD health of a girder NodeRole (one role on one node). Uses only
-- Lua's base and table libraries, as Argo CD gives scripts from argocd-cm.
--   Healthy      Active
--   Degraded     Error (its message says why; its log tail is in status)
--   Progressing  Proposed, Blocked, Todo, Running
local hs = {}
local state = obj.status and obj.status.state
local message = obj.status and obj.status.message
if state == "Active" then
  hs.status = "Healthy"
elseif state == "Error" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = (state or "Proposed")
if message ~= nil and message ~= "" then
  hs.message = hs.message .. ": " .. message
end
return hs
