// In the pool's resource group: the network the VMs join and the NSG that opens the game
// ports. (The app identity's roles there are in pool-roles.bicep, deployed after the app.)

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

@description('The VMs\' subnet.')
output vmSubnetId string = '${vnet.id}/subnets/servers'
