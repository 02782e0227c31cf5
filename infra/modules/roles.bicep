// Every role assignment of the deployment. main.bicep calls this module for the Function App
// (and the operator); apim.bicep calls it for API Management's identity, because APIM's Key
// Vault named value must wait for that assignment and APIM's identity exists only once the
// service does.

@description('The Key Vault the principals read secrets from.')
param keyVaultName string

@description('The storage account of the host, the deployment package and the spool; empty when this call grants no storage roles.')
param storageAccountName string = ''

@description('The Function App\'s system-assigned identity; empty to skip its roles.')
param functionAppPrincipalId string = ''

@description('API Management\'s system-assigned identity; empty to skip its role.')
param apimPrincipalId string = ''

@description('A person or pipeline that manages the vault\'s secrets (rotation, docs/operations.md); empty to skip.')
param operatorPrincipalId string = ''

@description('The operator\'s principal type.')
@allowed([ 'User', 'Group', 'ServicePrincipal' ])
param operatorPrincipalType string = 'User'

// Built-in role definition ids.
var roleIds = {
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
}

var grantFunctionApp = !empty(functionAppPrincipalId)
var grantStorage = grantFunctionApp && !empty(storageAccountName)

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
}

resource storage 'Microsoft.Storage/storageAccounts@2025-01-01' existing = if (grantStorage) {
  name: storageAccountName
}

// The handler reads the ClickHouse password, and the platform resolves the CHGATE_SPOOL_KEY
// reference, with the Function App's identity. Reading is all either needs.
resource functionAppVaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantFunctionApp) {
  name: guid(vault.id, functionAppPrincipalId, roleIds.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    principalId: functionAppPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Owner, not Contributor: the host keeps its keys and locks in blobs it manages itself;
// the same role covers pulling the deployment package and writing large spooled batches.
resource functionAppBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantStorage) {
  name: guid(resourceId('Microsoft.Storage/storageAccounts', storageAccountName), functionAppPrincipalId, roleIds.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: functionAppPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The handler sends spooled batches to the queue; the ingest_replay trigger reads and deletes
// them, and the handler moves unreplayable ones to the poison queue.
resource functionAppQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantStorage) {
  name: guid(resourceId('Microsoft.Storage/storageAccounts', storageAccountName), functionAppPrincipalId, roleIds.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageQueueDataContributor)
    principalId: functionAppPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// APIM reads the function host key (the func-host-key named value) from the vault.
resource apimVaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(apimPrincipalId)) {
  name: guid(vault.id, apimPrincipalId, roleIds.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    principalId: apimPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Secrets this deployment writes go through Azure Resource Manager, but in RBAC mode a person
// writing one directly (the rotation runbook's `az keyvault secret set`) needs a data-plane role.
resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roleIds.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsOfficer)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}
