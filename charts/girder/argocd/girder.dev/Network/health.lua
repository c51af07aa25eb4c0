-- Argo CD health of a girder Network. Uses only Lua's base and table
-- libraries, as Argo CD gives scripts from argocd-cm.
--   Degraded     Exhausted or Conflict, or an invalid spec (InvalidNetwork)
--   Healthy      Ready=True
--   Progressing  not yet allocated
local hs = {}
local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then return c end
  end
  return nil
end
for _, type in ipairs({"Conflict", "Exhausted"}) do
  local c = condition(type)
  if c ~= nil and c.status == "True" then
    hs.status = "Degraded"
    hs.message = type .. ": " .. (c.message or "")
    return hs
  end
end
local ready = condition("Ready")
if ready ~= nil and ready.reason == "InvalidNetwork" then
  hs.status = "Degraded"
  hs.message = "InvalidNetwork: " .. (ready.message or "")
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "ready"
  return hs
end
hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = ready.message
else
  hs.message = "waiting for girder's operator"
end
return hs
