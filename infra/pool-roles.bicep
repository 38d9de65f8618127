// In the pool's resource group: the app identity's roles there. Virtual Machine Contributor
// for the VMs; Network Contributor for the NICs and public IPs a VM PUT creates, reading public
// IPs, and joining the subnet.

@description('The Function App\'s managed identity.')
param principalId string

// Built-in role definition IDs.
var virtualMachineContributor = '9980e02c-c2be-4d73-94e8-173b1dc7cf3c'
var networkContributor = '4d97b98b-1d4f-4787-a291-c67834d212e7'

resource vmContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, virtualMachineContributor)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', virtualMachineContributor)
  }
}

resource netContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, networkContributor)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkContributor)
  }
}
