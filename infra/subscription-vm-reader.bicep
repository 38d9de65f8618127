// Read access to virtual machines across the subscription, and nothing else: the reconciler's
// one listing per pass (`virtualMachines?statusOnly=true`) is only offered at the
// subscription's scope. A custom role keeps it to VM reads (built-in Reader would read all).
targetScope = 'subscription'

@description('The Function App\'s managed identity.')
param principalId string

resource vmReader 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'vmpool-vm-reader')
  properties: {
    roleName: 'vmpool VM reader (${subscription().subscriptionId})'
    description: 'Lists virtual machines and their power state; nothing else.'
    type: 'CustomRole'
    permissions: [
      {
        actions: [
          'Microsoft.Compute/virtualMachines/read'
        ]
        notActions: []
      }
    ]
    assignableScopes: [
      subscription().id
    ]
  }
}

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, vmReader.id)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: vmReader.id
  }
}
