-- Argo CD health of a girder Workload. Uses only Lua's base and table
-- libraries, as Argo CD gives scripts from argocd-cm.
--   Degraded     a binding failed (Degraded=True names it), or the plan is
--                blocked (a cycle, a missing role: Blocked=True says which)
--   Healthy      every binding Active (Ready=True)
--   Progressing  bindings running, or waiting for nodes
local hs = {}
local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then return c end
  end
  return nil
end
for _, type in ipairs({"Degraded", "Blocked"}) do
  local c = condition(type)
  if c ~= nil and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.message or type
    return hs
  end
end
local ready = condition("Ready")
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "the operator has not acted on generation " .. generation .. " yet"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "ready"
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = (ready.reason or "") .. ": " .. ready.message
else
  hs.message = "waiting for girder's operator"
end
return hs
