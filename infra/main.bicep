// vmpool on Azure: a Linux Function App on Flex Consumption running the vmpool custom handler,
// its storage account (the Functions host's storage and vmpool's table), Application Insights,
// and, in the pool's resource group, the network the game-server VMs join. The app's
// system-assigned identity gets exactly the roles vmpool needs; no storage key is used.
//
// Deploy into the app's resource group; the pool's resource group may be the same one or
// another that already exists (poolResourceGroupName). See README, "Deploying for the first time".

@description('Azure region of every resource, and of the VMs (VMPOOL_LOCATION). It must offer Flex Consumption.')
param location string = resourceGroup().location

@description('Function App name (globally unique: <name>.azurewebsites.net).')
@minLength(2)
@maxLength(60)
param appName string

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param storageAccountName string = toLower('vmpool${uniqueString(resourceGroup().id)}')

@description('Resource group of the pool VMs, their network and NSG (VMPOOL_RESOURCE_GROUP). It must exist; it may be this one.')
param poolResourceGroupName string = resourceGroup().name

@description('Admin SSH public key of the VMs, one line (VMPOOL_SSH_PUBLIC_KEY).')
@minLength(16)
param sshPublicKey string

@description('Ports the game server listens on, comma-separated (VMPOOL_GAME_PORTS); the NSG opens them.')
param gamePorts string = '7777,7778'

@description('Protocol of the game ports in the NSG: Udp, Tcp or * (both).')
@allowed([
  'Udp'
  'Tcp'
  '*'
])
param gamePortsProtocol string = 'Udp'

@description('Address space of the pool network.')
param vnetAddressPrefix string = '10.40.0.0/16'

@description('Subnet of the pool VMs\' NICs (VMPOOL_SUBNET_ID).')
param vmSubnetPrefix string = '10.40.0.0/20'

@description('Table name (VMPOOL_TABLE); also the vmpool tag on the pool VMs.')
param tableName string = 'vmpool'

@description('VM size (VMPOOL_VM_SIZE).')
param vmSize string = 'Standard_B2s'

@description('VM image, publisher:offer:sku:version or an image resource ID (VMPOOL_IMAGE).')
param vmImage string = 'Canonical:ubuntu-24_04-lts:server:latest'

@description('Most VMs not Deallocated at once (VMPOOL_MAX_VMS).')
@minValue(1)
@maxValue(10000)
param maxVms int = 20

@description('Warm VMs kept in Standby at least (VMPOOL_MIN_STANDBY).')
@minValue(0)
param minStandby int = 0

// Flex Consumption accepts a maximumInstanceCount from 40 (the lowest maximum its stack data
// allows: Azure/azure-powershell, FunctionsStackFlexData) to 1000 (the per-app scale-out
// limit in Microsoft's Azure Functions service limits); ARM refuses anything outside.
@description('Most Flex Consumption instances: 40 to 1000. The HTTP functions scale as one group and the timer on instances of its own.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

var deploymentContainer = 'app-package'

// Built-in role definition IDs.
var roles = {
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: Flex Consumption reaches its storage over the public endpoint unless the app is VNet-integrated; access is by managed identity only (shared keys disabled)
  // checkov:skip=CKV_AZURE_59: see CKV_AZURE_35; blob public access is off and no key or SAS works
  // checkov:skip=CKV_AZURE_206: zone-redundant (ZRS); the pool table is rebuilt by the reconciler from ARM, so geo-replication buys nothing
  // checkov:skip=CKV_AZURE_43: the name is a parameter (3-24 characters, lower-cased); ARM refuses a bad one before anything is created
  name: storageAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainer
  properties: {
    publicAccess: 'None'
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${appName}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${appName}-insights'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy of Flex Consumption depends on the region; a lost zone costs a timer tick, and the pool state is in ZRS storage
  name: '${appName}-plan'
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

// The pool's network, in the pool's resource group.
module pool 'pool.bicep' = {
  name: 'vmpool-pool-network'
  scope: resourceGroup(poolResourceGroupName)
  params: {
    location: location
    namePrefix: tableName
    gamePorts: split(gamePorts, ',')
    gamePortsProtocol: gamePortsProtocol
    vnetAddressPrefix: vnetAddressPrefix
    vmSubnetPrefix: vmSubnetPrefix
  }
}

// The app identity's roles on the pool's resource group.
module poolRoles 'pool-roles.bicep' = {
  name: 'vmpool-pool-roles'
  scope: resourceGroup(poolResourceGroupName)
  params: {
    principalId: app.identity.principalId
  }
}

// Flex Consumption refuses some site properties that other plans take: Microsoft's app
// settings reference for Azure Functions lists them under "Flex Consumption plan
// deprecations" (ftpsState: FTPS not supported; use32BitWorkerProcess, alwaysOn,
// isReserved, IsXenon, windowsFxVersion, linuxFxVersion and the language versions: not
// valid or replaced by functionAppConfig.runtime; preWarmedInstanceCount,
// functionAppScaleLimit, containerSize: replaced by functionAppConfig.scaleAndConcurrency).
// What siteConfig sets here (minTlsVersion, http20Enabled, appSettings) is not among them;
// nor is any app setting that table names (FUNCTIONS_WORKER_RUNTIME,
// FUNCTIONS_EXTENSION_VERSION, WEBSITE_RUN_FROM_PACKAGE, WEBSITE_CONTENTSHARE...).
resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: the matchmaker calls the API over the internet with a function key; put a private endpoint in front and disable public access if it runs in a VNet
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys; client certificates would lock out the matchmaker and the timer
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales out on demand (maximumInstanceCount); it has no instance minimum to set
  // checkov:skip=CKV_AZURE_213: the Functions host probes the handler itself (GET /) before it sends work; Flex Consumption has no App Service health check
  // checkov:skip=CKV_AZURE_78: Flex Consumption has no FTP or FTPS endpoint and ARM refuses siteConfig.ftpsState on it; code is deployed only to the blob container below
  name: appName
  location: location
  kind: 'functionapp,linux'
  dependsOn: [
    packageContainer
  ]
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    // Only properties Flex Consumption accepts: see the note above this resource.
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
      appSettings: [
        // The Functions host's storage, by managed identity.
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__tableServiceUri'
          value: storage.properties.primaryEndpoints.table
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: insights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'Authorization=AAD'
        }
        // vmpool: its table is in AzureWebJobsStorage (VMPOOL_STORAGE unset: never `memory` here).
        {
          name: 'VMPOOL_TABLE'
          value: tableName
        }
        {
          name: 'VMPOOL_COMPUTE'
          value: 'arm'
        }
        {
          name: 'AZURE_SUBSCRIPTION_ID'
          value: subscription().subscriptionId
        }
        {
          name: 'VMPOOL_RESOURCE_GROUP'
          value: poolResourceGroupName
        }
        {
          name: 'VMPOOL_LOCATION'
          value: location
        }
        {
          name: 'VMPOOL_SUBNET_ID'
          value: pool.outputs.vmSubnetId
        }
        {
          name: 'VMPOOL_SSH_PUBLIC_KEY'
          value: sshPublicKey
        }
        {
          name: 'VMPOOL_GAME_PORTS'
          value: gamePorts
        }
        {
          name: 'VMPOOL_VM_SIZE'
          value: vmSize
        }
        {
          name: 'VMPOOL_IMAGE'
          value: vmImage
        }
        {
          name: 'VMPOOL_MAX_VMS'
          value: string(maxVms)
        }
        {
          name: 'VMPOOL_MIN_STANDBY'
          value: string(minStandby)
        }
        {
          name: 'VMPOOL_LOG_FORMAT'
          value: 'json'
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

// Storage roles of the app's identity: blobs for the host (keys, the timer's lease) and the
// app package, queues for the host, the table for vmpool.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, app.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
  }
}

resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, app.id, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
  }
}

resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, app.id, roles.storageTableDataContributor)
  scope: storage
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
  }
}

// Application Insights takes telemetry by Microsoft Entra ID only (DisableLocalAuth).
resource insightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, app.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    principalId: app.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

@description('The Function App\'s name, for `func azure functionapp publish`.')
output appName string = app.name

@description('The API base URL.')
output apiBaseUrl string = 'https://${app.properties.defaultHostName}/api'

@description('The managed identity\'s principal ID.')
output principalId string = app.identity.principalId

@description('The subnet of the pool VMs (VMPOOL_SUBNET_ID).')
output vmSubnetId string = pool.outputs.vmSubnetId
