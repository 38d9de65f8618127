// In the pool's resource group: the network the VMs join, the NSG that opens the game ports,
// and the app identity's roles there (the VMs, and the NICs and public IPs their PUT creates).

@description('Azure region.')
param location string

@description('Prefix of the network resources\' names.')
param namePrefix string

@description('Ports the game server listens on.')
param gamePorts array

@description('Protocol of the game ports: Udp, Tcp or *.')
param gamePortsProtocol string

@description('Address space of the pool network.')
param vnetAddressPrefix string

@description('Subnet of the VMs\' NICs.')
param vmSubnetPrefix string

@description('The Function App\'s managed identity.')
param principalId string

// Built-in role definition IDs.
var virtualMachineContributor = '9980e02c-c2be-4d73-94e8-173b1dc7cf3c'
var networkContributor = '4d97b98b-1d4f-4787-a291-c67834d212e7'

resource nsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${namePrefix}-nsg'
  location: location
  properties: {
    securityRules: [
      {
        name: 'game-ports'
        properties: {
          description: 'Players reach the game servers on VMPOOL_GAME_PORTS'
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: gamePortsProtocol
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRanges: gamePorts
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: '${namePrefix}-vnet'
  location: location
  properties: {
    addressSpace: {
      addressPrefixes: [
        vnetAddressPrefix
      ]
    }
    subnets: [
      {
        name: 'servers'
        properties: {
          addressPrefix: vmSubnetPrefix
          networkSecurityGroup: {
            id: nsg.id
          }
        }
      }
    ]
  }
}

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

@description('The VMs\' subnet.')
output vmSubnetId string = '${vnet.id}/subnets/servers'
