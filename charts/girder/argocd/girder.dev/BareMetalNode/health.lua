-- Argo CD health of a girder BareMetalNode. Uses only Lua's base and table
-- libraries, as Argo CD gives scripts from argocd-cm.
--   Suspended    spec.maintenance: girder leaves the machine alone
--   Degraded     status.error, or a BMC that cannot be reached or refuses
--                its credentials (the condition's message says why)
--   Healthy      Available or Provisioned with Ready=True; Discovered (a
--                machine girder pxe found, with nothing more to do)
--   Progressing  everything else (Registering, Inspecting, Provisioning,
--                Deprovisioning, a power change, a spec not yet acted on)
local hs = {}
local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then return c end
  end
  return nil
end
if obj.spec ~= nil and obj.spec.maintenance == true then
  hs.status = "Suspended"
  hs.message = "in maintenance: girder makes no BMC call and keeps the state"
  return hs
end
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for girder's operator"
  return hs
end
local phase = obj.status.phase or "Registering"
if obj.status.error ~= nil and obj.status.error.message ~= nil then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. (obj.status.error.type or "Error") .. ": " .. obj.status.error.message
  return hs
end
for _, type in ipairs({"CredentialsValid", "BMCReachable"}) do
  local c = condition(type)
  if c ~= nil and c.status == "False" then
    hs.status = "Degraded"
    hs.message = type .. "=False (" .. (c.reason or "") .. "): " .. (c.message or "")
    return hs
  end
end
local ready = condition("Ready")
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = phase .. ": the operator has not acted on generation " .. generation .. " yet"
  return hs
end
if phase == "Discovered" then
  hs.status = "Healthy"
  hs.message = "Discovered: found by girder pxe and inventoried by its agent; give it a BMC to manage it"
  return hs
end
if (phase == "Available" or phase == "Provisioned") and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = phase .. ": " .. (ready.message or "ready")
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = phase .. ": " .. ready.message
else
  hs.message = phase
end
return hs
