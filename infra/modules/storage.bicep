// One storage account for the Functions host (its own state and keys), the Flex Consumption
// deployment package, and the ingest spool (a queue, its poison queue, and a container for
// batches too large for a message). Shared keys are off: everything reaches it with the
// Function App's managed identity (roles.bicep).

@description('Azure region.')
param location string

@description('Storage account name: 3 to 24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string = 'app-package'

@description('The spool queue; the container for large spooled batches has the same name (CHGATE_SPOOL_QUEUE, functions/ingest_replay/function.json).')
param spoolName string = 'chgate-spool'

@description('Days after which spooled batch blobs are deleted. Longer than any ClickHouse outage the spool must bridge (docs/ingestion.md).')
@minValue(1)
param spoolBlobRetentionDays int = 30

param tags object = {}

resource storage 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    // The Rust SDK has no shared-key authentication, and the host uses its identity too.
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }

  resource blobService 'blobServices' = {
    name: 'default'

    resource deploymentContainer 'containers' = {
      name: deploymentContainerName
      properties: { publicAccess: 'None' }
    }

    resource spoolContainer 'containers' = {
      name: spoolName
      properties: { publicAccess: 'None' }
    }
  }

  resource queueService 'queueServices' = {
    name: 'default'

    resource spoolQueue 'queues' = {
      name: spoolName
    }

    // The handler moves batches that can never be replayed here itself, without expiry;
    // the host uses the same queue for messages it cannot hand to the handler at all.
    resource spoolPoisonQueue 'queues' = {
      name: '${spoolName}-poison'
    }
  }

  // A replayed batch's blob is kept (a redelivered message must still find its rows), so
  // old blobs are removed by age instead.
  resource lifecycle 'managementPolicies' = {
    name: 'default'
    properties: {
      policy: {
        rules: [
          {
            name: 'expire-spooled-batches'
            enabled: true
            type: 'Lifecycle'
            definition: {
              filters: {
                blobTypes: [ 'blockBlob' ]
                prefixMatch: [ '${spoolName}/' ]
              }
              actions: {
                baseBlob: {
                  delete: { daysAfterModificationGreaterThan: spoolBlobRetentionDays }
                }
              }
            }
          }
        ]
      }
    }
  }
}

output name string = storage.name
output id string = storage.id
// Without the trailing slash the primaryEndpoints values carry, as the spool settings expect.
output blobServiceUri string = 'https://${storage.name}.blob.${environment().suffixes.storage}'
output queueServiceUri string = 'https://${storage.name}.queue.${environment().suffixes.storage}'
output deploymentContainerUrl string = '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
output spoolQueueName string = spoolName
output spoolPoisonQueueName string = '${spoolName}-poison'
